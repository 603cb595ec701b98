"""Writes docs/openapi.json. Edit this when a route or frame changes and run it;
the tests fail when the document misses a route or frame of the code."""
import json
import os
S = lambda name: {"$ref": f"#/components/schemas/{name}"}
string, integer, boolean = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
nullable = lambda t: {"type": [t["type"], "null"]} if "type" in t else {"oneOf": [t, {"type": "null"}]}
arr = lambda items: {"type": "array", "items": items}
def obj(required, props, extra=True):
    o = {"type": "object", "properties": props}
    if required: o["required"] = required
    return o

schemas = {
  "Error": obj(["error"], {"error": obj(["code", "message"], {"code": {"type": "string", "pattern": "^[a-z_]+$"}, "message": string})}),
  "Mentions": obj(["userIds", "channel", "here"], {"userIds": arr(string), "channel": boolean, "here": boolean}),
  "Media": obj(["mediaId", "conversationId", "uploaderId", "filename", "contentType", "size", "sha256", "status"], {
      "mediaId": string, "conversationId": string, "uploaderId": string, "filename": string, "contentType": string,
      "size": integer, "sha256": string, "status": {"type": "string", "enum": ["pending", "ready", "blocked"]},
      "reason": string, "width": integer, "height": integer, "url": string, "thumbnailUrl": string, "urlExpiresAt": integer}),
  "Message": obj(["messageId", "conversationId", "seq", "senderId", "senderDeviceId", "ts", "body", "attachments", "edited", "deleted", "clientMsgId"], {
      "messageId": string, "conversationId": string, "seq": integer, "senderId": string, "senderDeviceId": string, "ts": integer,
      "body": string, "attachments": arr(S("Media")), "edited": boolean, "deleted": boolean, "clientMsgId": string, "mentions": S("Mentions")}),
  "Conversation": obj(["conversationId", "type", "memberIds", "createdAt"], {
      "conversationId": string, "type": {"type": "string", "enum": ["dm", "group", "channel"]}, "title": {"type": ["string", "null"]},
      "memberIds": arr(string), "createdAt": integer, "historyVisibility": {"type": "string", "enum": ["shared", "joined"]}}),
  "ConversationSummary": obj(["conversationId", "type", "lastSeq", "lastReadSeq", "unreadCount"], {
      "conversationId": string, "type": {"type": "string", "enum": ["dm", "group", "channel"]}, "title": {"type": ["string", "null"]},
      "historyVisibility": {"type": "string", "enum": ["shared", "joined"]}, "lastSeq": integer, "lastReadSeq": integer,
      "unreadCount": integer, "lastMessage": {"oneOf": [S("Message"), {"type": "null"}]}, "muted": boolean,
      "notify": {"type": "string", "enum": ["all", "mentions", "none"]}, "unreadMentions": integer}),
  "Member": obj(["userId", "role", "joinedAt", "lastDeliveredSeq", "lastReadSeq"], {
      "userId": string, "role": string, "joinedAt": integer, "lastDeliveredSeq": integer, "lastReadSeq": integer,
      "devices": arr(obj(["deviceId"], {"deviceId": string, "lastDeliveredSeq": integer, "lastReadSeq": integer}))}),
  "Device": obj(["deviceId", "createdAt", "current"], {"deviceId": string, "deviceName": {"type": ["string", "null"]}, "platform": {"type": ["string", "null"]},
      "createdAt": integer, "lastSeen": {"type": ["integer", "null"]}, "current": boolean}),
  "User": obj(["userId", "username"], {"userId": string, "username": string, "displayName": {"type": ["string", "null"]}}),
  "Event": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": [
      "message.new", "message.edit", "message.delete", "receipt.delivered", "receipt.read", "conversation.member", "media.update"]}, "cursor": string},
      "description": "A durable event, as the WebSocket sends it (see asyncapi.json)."},
  "ConversationSettings": obj(["muted", "mutedUntil", "notify"], {"muted": boolean, "mutedUntil": {"type": ["integer", "null"]},
      "notify": {"type": "string", "enum": ["all", "mentions", "none"]}}),
  "Hold": {"type": "object", "description": "A legal hold: what it covers and why."},
  "DeletionOutcome": {"type": "object", "properties": {"deletedRows": integer, "erasedRows": integer, "filesRemoved": integer, "deletedMessages": integer}},
}

def resp(description, schema=None, status_headers=None):
    r = {"description": description}
    if schema is not None: r["content"] = {"application/json": {"schema": schema}}
    return r
def body(schema, required=True):
    return {"required": required, "content": {"application/json": {"schema": schema}}}
E = lambda d: {"$ref": f"#/components/responses/{d}"}
def errors(*codes):
    names = {400: "BadRequest", 401: "Unauthenticated", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 413: "TooLarge", 429: "RateLimited"}
    return {str(c): E(names[c]) for c in codes}
def path_param(name, description):
    return {"name": name, "in": "path", "required": True, "schema": string, "description": description}
def query(name, schema, description, required=False):
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}

def op(summary, ok_status, ok, *, request=None, params=(), errs=(400, 401, 429), public=False, tag="chat"):
    o = {"summary": summary, "tags": [tag], "responses": {str(ok_status): ok, **errors(*errs)}}
    if params: o["parameters"] = list(params)
    if request: o["requestBody"] = request
    if public: o["security"] = []
    return o

cid = path_param("id", "the conversation's id")
P = {}
P["/healthz"] = {"get": op("Liveness: 200 once the server accepts requests.", 200, resp("ok", obj(["status"], {"status": {"const": "ok"}})), errs=(), public=True, tag="operations")}
P["/readyz"] = {"get": op("Readiness: 200 when every part is ready, 503 naming the parts that are not.", 200, resp("ready", {"type": "object"}), errs=(), public=True, tag="operations")}
P["/readyz"]["get"]["responses"]["503"] = resp("not ready", {"type": "object"})
P["/metrics"] = {"get": {"summary": "Prometheus text format; with `[gateway] metrics_token` set, that bearer token is required.", "tags": ["operations"], "security": [{}, {"bearer": []}],
   "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": string}}}, "401": E("Unauthenticated")}}}
P["/v1/users"] = {
  "post": op("Create an account (the first on a fresh server is its administrator).", 201, resp("created", obj(["userId", "username"], {"userId": string, "username": string})),
      request=body(obj(["username", "password"], {"username": {"type": "string", "pattern": "^[a-z0-9_.-]{3,32}$"}, "password": {"type": "string", "minLength": 8}, "displayName": string})),
      errs=(400, 409, 413, 429), public=True, tag="accounts"),
  "get": op("Look users up by `username` or by `ids` (comma-separated, at most 100).", 200, resp("found", obj(["users"], {"users": arr(S("User"))})),
      params=[query("username", string, "an exact username"), query("ids", string, "comma-separated user ids")], tag="accounts"),
}
P["/v1/sessions"] = {"post": op("Log in: each session is a device with its own access token.", 201,
    resp("created", obj(["accessToken", "userId", "deviceId", "expiresIn"], {"accessToken": string, "userId": string, "deviceId": string, "expiresIn": integer})),
    request=body(obj(["username", "password"], {"username": string, "password": string, "deviceName": string, "platform": string})), errs=(400, 401, 413, 429), public=True, tag="accounts")}
P["/v1/sessions/current"] = {"delete": op("Log the calling device out.", 204, resp("logged out"), errs=(401, 429), tag="accounts")}
P["/v1/devices"] = {"get": op("The caller's devices.", 200, resp("devices", obj(["devices"], {"devices": arr(S("Device"))})), errs=(401, 429), tag="accounts")}
P["/v1/devices/{id}"] = {"delete": op("Log one of the caller's devices out.", 204, resp("logged out"), params=[path_param("id", "the device's id")], errs=(401, 404, 429), tag="accounts")}
push_body = body(obj(["provider", "token"], {"provider": {"type": "string", "enum": ["apns", "fcm"]}, "token": string, "appId": string}))
P["/v1/devices/{id}/push"] = {
  "put": op("Set the device's push token.", 204, resp("set"), request=push_body, params=[path_param("id", "the device's id")], errs=(400, 401, 404, 413, 429), tag="notifications"),
  "delete": op("Forget the device's push token.", 204, resp("forgotten"), params=[path_param("id", "the device's id")], errs=(401, 404, 429), tag="notifications")}
P["/v1/me/settings"] = {
  "get": op("The caller's settings.", 200, resp("settings", obj(["pushPreview"], {"pushPreview": {"type": "string", "enum": ["full", "sender", "none"]}})), errs=(401, 429), tag="notifications"),
  "put": op("Change the caller's settings.", 200, resp("settings", obj(["pushPreview"], {"pushPreview": {"type": "string", "enum": ["full", "sender", "none"]}})),
      request=body(obj([], {"pushPreview": {"type": "string", "enum": ["full", "sender", "none"]}})), errs=(400, 401, 413, 429), tag="notifications")}
P["/v1/me/blocks"] = {"get": op("Who the caller blocks.", 200, resp("blocks", obj(["userIds"], {"userIds": arr(string)})), errs=(401, 429), tag="accounts")}
P["/v1/me/blocks/{user_id}"] = {
  "put": op("Block a user.", 204, resp("blocked"), params=[path_param("user_id", "the user's id")], errs=(400, 401, 404, 429), tag="accounts"),
  "delete": op("Unblock a user.", 204, resp("unblocked"), params=[path_param("user_id", "the user's id")], errs=(400, 401, 404, 429), tag="accounts")}
P["/v1/conversations/{id}/settings"] = {
  "get": op("The caller's notification settings for a conversation (members only).", 200, resp("settings", S("ConversationSettings")), params=[cid], errs=(401, 403, 404, 429), tag="notifications"),
  "put": op("Change them.", 200, resp("settings", S("ConversationSettings")), params=[cid],
      request=body(obj([], {"muted": boolean, "mutedUntil": {"type": ["integer", "null"]}, "notify": {"type": "string", "enum": ["all", "mentions", "none"]}})),
      errs=(400, 401, 403, 404, 413, 429), tag="notifications")}
P["/v1/conversations"] = {
  "post": op("Create a dm, group or channel (a dm that exists is returned with 200).", 201, resp("created", S("Conversation")),
      request=body(obj(["type", "memberIds"], {"type": {"type": "string", "enum": ["dm", "group", "channel"]}, "memberIds": arr(string), "title": string,
                                               "historyVisibility": {"type": "string", "enum": ["shared", "joined"]}})), errs=(400, 401, 403, 404, 413, 429)),
  "get": op("The caller's conversations.", 200, resp("conversations", obj(["conversations"], {"conversations": arr(S("ConversationSummary"))})), errs=(401, 429))}
P["/v1/conversations"]["post"]["responses"]["200"] = resp("the dm that already exists", S("Conversation"))
P["/v1/conversations/{id}/members"] = {
  "post": op("Add members.", 204, resp("added"), params=[cid], request=body(obj(["userIds"], {"userIds": arr(string)})), errs=(400, 401, 403, 404, 413, 429)),
  "get": op("The members, with their delivery and read positions.", 200, resp("members", obj(["members"], {"members": arr(S("Member"))})), params=[cid], errs=(401, 403, 404, 429))}
P["/v1/conversations/{id}/members/{user_id}"] = {"delete": op("Remove a member (or leave).", 204, resp("removed"), params=[cid, path_param("user_id", "the member's id")], errs=(400, 401, 403, 404, 429))}
P["/v1/conversations/{id}/messages"] = {"get": op("A page of history, ascending seq.", 200, resp("page", obj(["messages", "hasMore"], {"messages": arr(S("Message")), "hasMore": boolean})),
    params=[cid, query("before", {"type": "integer", "minimum": 0}, "only messages with a smaller seq"), query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "default 50")], errs=(400, 401, 403, 404, 429))}
P["/v1/conversations/{id}/read"] = {"post": op("Move the caller's read cursor forward.", 204, resp("moved"), params=[cid], request=body(obj(["lastReadMessageId"], {"lastReadMessageId": string})), errs=(400, 401, 403, 404, 413, 429))}
send = body(obj(["conversationId", "clientMsgId", "body"], {"conversationId": string, "clientMsgId": string, "body": {"type": "string", "maxLength": 16384},
                                                             "attachments": arr(obj(["mediaId"], {"mediaId": string}))}))
P["/v1/messages"] = {"post": op("Send; 201 means durable; the same clientMsgId again returns the original with 200.", 201, resp("sent", S("Message")), request=send, errs=(400, 401, 403, 404, 409, 413, 429))}
P["/v1/messages"]["post"]["responses"]["200"] = resp("the original message (a retry)", S("Message"))
P["/v1/messages"]["post"]["parameters"] = [{"name": "traceparent", "in": "header", "required": False, "schema": string,
    "description": "W3C trace context: with [telemetry] on, a valid sampled one makes the send part of the caller's trace; others are ignored"}]
P["/v1/messages/{id}"] = {
  "patch": op("Edit (its sender only).", 200, resp("edited", S("Message")), params=[path_param("id", "the message's id")], request=body(obj(["body"], {"body": string})), errs=(400, 401, 403, 404, 409, 413, 429)),
  "delete": op("Delete (its sender or a conversation admin).", 204, resp("deleted"), params=[path_param("id", "the message's id")], errs=(401, 403, 404, 429))}
P["/v1/sync"] = {"get": op("Everything after the cursor, in order.", 200, resp("events", obj(["events", "nextCursor", "hasMore"], {"events": arr(S("Event")), "nextCursor": string, "hasMore": boolean})),
    params=[query("cursor", string, "from a previous nextCursor or event"), query("limit", {"type": "integer", "minimum": 1}, "events per page")], errs=(400, 401, 429))}
P["/v1/search"] = {"get": op("Search the messages the caller may read.", 200,
    resp("results", obj(["results", "nextCursor"], {"results": arr(obj(["message", "highlights"], {"message": S("Message"), "highlights": arr(arr(integer))})), "nextCursor": {"type": ["string", "null"]}})),
    params=[query("q", {"type": "string", "minLength": 1}, "the query", True), query("conversationId", string, "one conversation"), query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "default 20"), query("cursor", string, "the previous page's nextCursor")],
    errs=(400, 401, 403, 404, 429), tag="search")}
P["/v1/media"] = {"post": op("Declare an upload; returns where to PUT the bytes.", 201,
    resp("declared", obj(["mediaId", "upload", "expiresAt"], {"mediaId": string, "upload": obj(["method", "url", "headers"], {"method": string, "url": string, "headers": {"type": "object", "additionalProperties": string}}), "expiresAt": integer})),
    request=body(obj(["conversationId", "filename", "contentType", "size", "sha256"], {"conversationId": string, "filename": string, "contentType": string, "size": {"type": "integer", "minimum": 0}, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}})),
    errs=(400, 401, 403, 404, 413, 429), tag="media")}
P["/v1/media/{id}"] = {"get": op("The media object, with fresh signed URLs when ready.", 200, resp("media", S("Media")), params=[path_param("id", "the upload's id")], errs=(401, 403, 404, 429), tag="media")}
P["/v1/media/{id}/complete"] = {"post": op("The bytes are stored: check them.", 202, resp("accepted", obj(["mediaId", "status"], {"mediaId": string, "status": string})), params=[path_param("id", "the upload's id")], errs=(401, 403, 404, 409, 429), tag="media")}
P["/v1/ws"] = {"get": {"summary": "The WebSocket (upgrade); frames in asyncapi.json. Token in Authorization or ?accessToken=.", "tags": ["chat"],
    "parameters": [query("accessToken", string, "for browsers"), query("cursor", string, "resume after this cursor")],
    "responses": {"101": {"description": "switching protocols"}, **errors(400, 401, 429)}}}
admin = dict(tag="administration")
P["/v1/admin/roles"] = {"post": op("Grant a role (administrators only).", 204, resp("granted"), request=body(obj(["userId", "role"], {"userId": string, "role": {"type": "string", "enum": ["admin", "compliance"]}})), errs=(400, 401, 403, 404, 413, 429), **admin)}
P["/v1/admin/roles/{user_id}/{role}"] = {"delete": op("Revoke a role.", 204, resp("revoked"), params=[path_param("user_id", "the user's id"), path_param("role", "admin or compliance")], errs=(400, 401, 403, 404, 429), **admin)}
nullable = lambda t: {"type": [t, "null"]}
counts = lambda *names: obj(list(names), {name: integer for name in names})
P["/v1/admin/status"] = {"get": op("How the server is doing (administrators only; `confab status`).", 200, resp("status", obj(["uptimeSecs", "ready", "connected", "log", "consumers", "disk"], {
    "uptimeSecs": integer,
    "ready": arr(obj(["part", "ready"], {"part": string, "ready": boolean, "problem": nullable("string")})),
    "connected": counts("users", "devices"),
    "log": counts("partitions", "records", "segments", "bytes"),
    "consumers": arr(obj(["name", "lag", "partitions"], {"name": string, "lag": integer, "partitions": arr(counts("partition", "committed", "end", "lag"))})),
    "historySink": {"oneOf": [{"type": "null"}, obj(["lag", "restarts", "failing"], {"lag": integer, "restarts": integer, "failing": arr(string)})]},
    "disk": arr(obj(["part", "bytes"], {"part": string, "bytes": integer}))})), errs=(401, 403, 429), **admin)}
admin_device = obj(["deviceId", "createdAt", "online", "push"], {"deviceId": string, "deviceName": nullable("string"), "platform": nullable("string"), "createdAt": integer,
                                                                 "lastSeen": nullable("integer"), "online": boolean, "push": boolean})
P["/v1/admin/users/{user_id}/devices"] = {"get": op("A user's devices (administrators only).", 200, resp("devices", obj(["userId", "devices"], {"userId": string, "devices": arr(admin_device)})),
    params=[path_param("user_id", "the user's id")], errs=(401, 403, 404, 429), **admin)}
P["/v1/admin/users/{user_id}/devices/{device_id}"] = {"delete": op("Log a user's device out (administrators only; audited): its tokens answer 401 and its sockets close.", 204, resp("logged out"),
    params=[path_param("user_id", "the user's id"), path_param("device_id", "the device's id")], errs=(401, 403, 404, 429), **admin)}
P["/v1/admin/sql"] = {"post": op("Read-only SQL over the history (compliance accounts).", 200, resp("rows", obj(["columns", "rows"], {"columns": arr(string), "rows": arr(arr({}))})),
    request=body(obj(["sql"], {"sql": string})), errs=(400, 401, 403, 413, 429), **admin)}
P["/v1/admin/holds"] = {
  "post": op("Place a legal hold on a user or a conversation.", 201, resp("placed", S("Hold")), request=body(obj(["reason"], {"userId": string, "conversationId": string, "reason": string})), errs=(400, 401, 403, 404, 413, 429), **admin),
  "get": op("The active holds.", 200, resp("holds", obj(["holds"], {"holds": arr(S("Hold"))})), errs=(401, 403, 429), **admin)}
P["/v1/admin/holds/{id}"] = {"delete": op("Release a hold.", 204, resp("released"), params=[path_param("id", "the hold's id")], errs=(401, 403, 404, 429), **admin)}
P["/v1/admin/retention"] = {"post": op("Delete a conversation's history before a time.", 200, resp("deleted", S("DeletionOutcome")), request=body(obj(["conversationId", "before"], {"conversationId": string, "before": integer})), errs=(400, 401, 403, 404, 409, 413, 429), **admin)}
P["/v1/admin/retention-policies"] = {"get": op("The retention policies and the server default.", 200, resp("policies", obj(["policies"], {"policies": arr({"type": "object"}), "defaultRetentionDays": {"type": ["integer", "null"]}})), errs=(401, 403, 429), **admin)}
P["/v1/admin/retention-policies/{id}"] = {"put": op("Set (or clear, with null) a conversation's retention.", 200, resp("set", obj(["conversationId", "retentionDays"], {"conversationId": string, "retentionDays": {"type": ["integer", "null"]}})),
    params=[cid], request=body(obj([], {"retentionDays": {"type": ["integer", "null"], "minimum": 1}})), errs=(400, 401, 403, 404, 413, 429), **admin)}
P["/v1/admin/erasure"] = {"post": op("Erase a user's messages from the history.", 200, resp("erased", S("DeletionOutcome")), request=body(obj(["userId"], {"userId": string})), errs=(400, 401, 403, 404, 409, 413, 429), **admin)}
page = {"get": {"summary": "The web client's page and assets (public).", "tags": ["web"], "security": [], "responses": {"200": {"description": "the file"}, "304": {"description": "not modified"}}}}
P["/"] = page
for f in ["app.js", "api.js", "sha256.js", "style.css", "favicon.svg"]:
    P[f"/app/{f}"] = page
P["/openapi.json"] = {"get": {"summary": "This document.", "tags": ["operations"], "security": [], "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
P["/asyncapi.json"] = {"get": {"summary": "The WebSocket's AsyncAPI 3 document.", "tags": ["operations"], "security": [], "responses": {"200": {"description": "AsyncAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}}

err = lambda d: {"description": d, "content": {"application/json": {"schema": S("Error")}}}
doc = {
  "openapi": "3.1.0",
  "info": {"title": "Confab", "version": "1", "description": "Confab's HTTP API: shared/API.md (the contract) and docs/API-EXTENSIONS.md (what Confab adds). Times are milliseconds since the Unix epoch; errors have the shape `{error: {code, message}}`."},
  "servers": [{"url": "http://127.0.0.1:8080"}],
  "security": [{"bearer": []}],
  "tags": [{"name": n} for n in ["accounts", "chat", "notifications", "media", "search", "administration", "operations", "web"]],
  "paths": P,
  "components": {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "the accessToken of POST /v1/sessions"}},
    "schemas": schemas,
    "responses": {"BadRequest": err("invalid input; the message names the field"), "Unauthenticated": err("missing or invalid token"),
                  "Forbidden": err("not allowed, for example not a member"), "NotFound": err("unknown resource"), "Conflict": err("conflict"),
                  "TooLarge": err("too large"),
                  "RateLimited": {"description": "rate limited", "headers": {"Retry-After": {"schema": integer, "description": "seconds"}}, "content": {"application/json": {"schema": S("Error")}}}},
  },
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "openapi.json")
with open(out, "w") as file:
    json.dump(doc, file, indent=2)
    file.write("\n")
print(len(P), "paths")
