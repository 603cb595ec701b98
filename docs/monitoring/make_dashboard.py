#!/usr/bin/env python3
"""Writes grafana-dashboard.json: Confab's dashboard for Grafana (10 or
later) over a Prometheus that scrapes /metrics (see prometheus.yml).
Every expression names only metrics Confab exports; the integration test
`metrics_a_dashboard_reads` checks that against a live server."""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(id_, title, exprs, unit, x, y, w=12, h=8, kind="timeseries", description=""):
    return {
        "id": id_,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend} for i, (expr, legend) in enumerate(exprs)],
    }


def quantiles(metric, by="", qs=(0.5, 0.95, 0.99)):
    group = f"le{',' + by if by else ''}"
    label = f"{{{{{by}}}}} " if by else ""
    return [(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[$__rate_interval])))", f"{label}p{int(q * 100)}") for q in qs]


panels = [
    panel(1, "Connected users", [("sum(confab_ws_connected_users)", "users")], "short", 0, 0, 6, 4, "stat"),
    panel(2, "Connected devices", [("sum(confab_ws_connected_devices)", "devices")], "short", 6, 0, 6, 4, "stat"),
    panel(3, "Push success rate", [('sum(rate(confab_push_attempts_total{outcome="sent"}[$__rate_interval])) / sum(rate(confab_push_attempts_total[$__rate_interval]))', "sent / attempts")], "percentunit", 12, 0, 6, 4, "stat"),
    panel(4, "Parts ready", [("min(confab_ready)", "all parts")], "bool_yes_no", 18, 0, 6, 4, "stat"),
    panel(5, "Send latency (accepted to acknowledged, durable)", quantiles("confab_send_duration_seconds", "transport"), "s", 0, 4,
          description="From a message.send (WebSocket) or POST .../messages (HTTP) to its acknowledgement, which waits for the fsync."),
    panel(6, "Delivery lag (append to socket write)", quantiles("confab_delivery_lag_seconds"), "s", 12, 4,
          description="From the server accepting an event to its frame written on a receiving device's socket."),
    panel(7, "Sends per second", [("sum by (transport) (rate(confab_send_duration_seconds_count[$__rate_interval]))", "{{transport}}")], "ops", 0, 12),
    panel(8, "HTTP requests by status", [("sum by (status) (rate(confab_http_requests_total[$__rate_interval]))", "{{status}}")], "reqps", 12, 12),
    panel(9, "Log consumer lag (records)", [("sum by (consumer) (confab_log_consumer_lag_records)", "{{consumer}}")], "short", 0, 20,
          description="Records durable in the log and not yet committed by each consumer (pipelines, the history sink, search, analytics)."),
    panel(10, "History sink lag (records)", [("sum(confab_history_sink_lag_records)", "history")], "short", 12, 20),
    panel(11, "Log fsync latency", quantiles("confab_log_fsync_duration_seconds", qs=(0.5, 0.99)), "s", 0, 28,
          description="One group commit's fsyncs; every durable send waits for one."),
    panel(12, "Push attempts by outcome", [("sum by (provider, outcome) (rate(confab_push_attempts_total[$__rate_interval]))", "{{provider}} {{outcome}}")], "ops", 12, 28),
    panel(13, "Message to push request", quantiles("confab_push_message_to_request_seconds", qs=(0.5, 0.99)), "s", 0, 36),
    panel(14, "Workflow steps and retries", [("rate(confab_workflow_steps_total[$__rate_interval])", "steps"), ("rate(confab_workflow_activity_failures_total[$__rate_interval])", "failed activities (retried)")], "ops", 12, 36),
]

dashboard = {
    "title": "Confab",
    "uid": "confab",
    "tags": ["confab"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]},
    "panels": panels,
}

out = pathlib.Path(__file__).with_name("grafana-dashboard.json")
out.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {out}")
