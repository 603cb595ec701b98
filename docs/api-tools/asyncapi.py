"""Writes docs/asyncapi.json. Edit this when a route or frame changes and run it;
the tests fail when the document misses a route or frame of the code."""
import json
import os
string, integer, boolean = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
ref = lambda n: {"$ref": f"#/components/schemas/{n}"}
openapi = lambda n: {"$ref": f"openapi.json#/components/schemas/{n}"}
def payload(type_, required, props, description):
    return {"name": type_, "title": type_, "summary": description, "payload": {"type": "object", "required": ["type"] + required,
            "properties": {"type": {"const": type_}, **props}}}
cursor = {"cursor": {"type": "string", "description": "resume after this event with ?cursor="}}
server = {
  "hello": payload("hello", ["userId", "deviceId", "heartbeatMs"], {"userId": string, "deviceId": string, "heartbeatMs": integer}, "The first frame of every connection."),
  "ack": payload("ack", ["id", "message"], {"id": {"description": "the command's id, echoed"}, "message": openapi("Message")}, "A command succeeded; for message.send, the message as stored."),
  "error": payload("error", ["code", "message"], {"id": {"description": "the command's id, when it answers one"}, "code": string, "message": string, "cursor": string}, "A command failed, or the server closes the socket and says where to resume."),
  "pong": payload("pong", [], {"id": {"description": "the ping's id, if it had one"}}, "The answer to ping."),
  "typing": payload("typing", ["conversationId", "userId"], {"conversationId": string, "userId": string}, "Someone is typing (best effort)."),
  "presence": payload("presence", ["userId", "status", "lastSeen"], {"userId": string, "status": {"type": "string", "enum": ["online", "offline"]}, "lastSeen": integer}, "Someone came online or went offline (best effort)."),
  "message.new": payload("message.new", ["message", "cursor"], {"message": openapi("Message"), **cursor}, "A new message (not to the device that sent it: that one has the ack)."),
  "message.edit": payload("message.edit", ["message", "cursor"], {"message": openapi("Message"), **cursor}, "A message was edited."),
  "message.delete": payload("message.delete", ["conversationId", "messageId", "seq", "cursor"], {"conversationId": string, "messageId": string, "seq": integer, **cursor}, "A message was deleted."),
  "receipt.delivered": payload("receipt.delivered", ["conversationId", "userId", "seq", "cursor"], {"conversationId": string, "userId": string, "seq": integer, **cursor}, "That user's devices have everything up to seq."),
  "receipt.read": payload("receipt.read", ["conversationId", "userId", "seq", "cursor"], {"conversationId": string, "userId": string, "seq": integer, **cursor}, "That user read up to seq."),
  "conversation.member": payload("conversation.member", ["conversationId", "userId", "change", "cursor"], {"conversationId": string, "userId": string, "change": {"type": "string", "enum": ["joined", "left"]}, **cursor}, "Someone joined or left."),
  "media.update": payload("media.update", ["conversationId", "messageId", "media", "cursor"], {"conversationId": string, "messageId": string, "media": openapi("Media"), **cursor}, "An attachment's status changed."),
}
optional_id = {"description": "optional; echoed in an error that answers this command"}
client = {
  "message.send": payload("message.send", ["id", "conversationId", "clientMsgId", "body"], {"id": {"description": "the client's own id, echoed in the answer"}, "conversationId": string, "clientMsgId": string, "body": string, "attachments": {"type": "array", "items": {"type": "object", "required": ["mediaId"], "properties": {"mediaId": string}}}}, "Send a message; answered by ack with the message (the same rules as POST /v1/messages) or error."),
  "receipt.delivered": payload("receipt.delivered", ["conversationId", "seq"], {"id": optional_id, "conversationId": string, "seq": integer}, "This device has everything up to seq."),
  "receipt.read": payload("receipt.read", ["conversationId", "seq"], {"id": optional_id, "conversationId": string, "seq": integer}, "Read up to seq."),
  "typing": payload("typing", ["conversationId"], {"id": optional_id, "conversationId": string}, "The user is typing."),
  "ping": payload("ping", [], {"id": {"description": "optional, echoed in the pong"}}, "Answered by pong."),
}
key = lambda side, t: f"{side}.{t}"
messages = {key("server", t): m for t, m in server.items()}
messages.update({key("client", t): m for t, m in client.items()})
doc = {
  "asyncapi": "3.0.0",
  "info": {"title": "Confab WebSocket", "version": "1", "description": "GET /v1/ws, upgraded. Every frame is a JSON text frame, an object with a `type`. The token comes in the Authorization header or, for browsers, as ?accessToken=; with ?cursor= the server first replays every durable event after it, then the live ones, none missing and none twice. Close codes: 4401 when the token expires or the device logs out."},
  "servers": {"local": {"host": "127.0.0.1:8080", "protocol": "ws"}},
  "channels": {"socket": {"address": "/v1/ws", "title": "A device's socket",
      "bindings": {"ws": {"method": "GET", "query": {"type": "object", "properties": {"accessToken": string, "cursor": string}}}},
      "messages": {k: {"$ref": f"#/components/messages/{k.replace('.', '_')}"} for k in messages}}},
  "operations": {
    "sendFrames": {"action": "send", "channel": {"$ref": "#/channels/socket"}, "title": "What the server sends to a device",
        "messages": [{"$ref": f"#/channels/socket/messages/{key('server', t)}"} for t in server]},
    "receiveCommands": {"action": "receive", "channel": {"$ref": "#/channels/socket"}, "title": "What a device sends to the server",
        "messages": [{"$ref": f"#/channels/socket/messages/{key('client', t)}"} for t in client]},
  },
  "components": {"messages": {k.replace('.', '_'): m for k, m in messages.items()}},
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "asyncapi.json")
with open(out, "w") as file:
    json.dump(doc, file, indent=2)
    file.write("\n")
print(len(messages))
