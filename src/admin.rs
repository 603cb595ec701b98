//! `confab admin` and `confab status`: operators' commands, spoken to a
//! running server over its HTTP API (the server holds the data directory's
//! lock, so nothing here opens the files).
//!
//! ## The happy path
//! An operator logs in once (`confab admin login alice`, the password on
//! stdin), keeps the printed token in a file, and passes it with
//! `--token-file` (or `CONFAB_TOKEN`); `--url` (or `CONFAB_URL`) names the
//! server, `http://127.0.0.1:8080` by default. Each command is one or two
//! API calls: users are named by username or by id (`u_…`), resolved with
//! `GET /v1/users?username=`. Every action is the server's to authorise
//! and audit (`/v1/admin/*` needs the `admin` role), never this client's.
//!
//! ## Failures
//! - No token: says how to get one. A refused call prints the API's own
//!   `{error: {code, message}}` with the status, and exits non-zero.
//! - The server unreachable: names the URL and says to start it or pass
//!   `--url`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the server is and who is asking.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The server's base URL [default: $CONFAB_URL, else http://127.0.0.1:8080].
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// A file holding an administrator's access token [default: $CONFAB_TOKEN].
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Log in and print an access token for --token-file (the password is
    /// read from stdin).
    Login {
        username: String,
        /// The name the device gets in the user's device list.
        #[arg(long, default_value = "confab admin")]
        device_name: String,
    },
    /// Create a user (the password is read from stdin), with roles.
    CreateUser {
        username: String,
        #[arg(long)]
        display_name: Option<String>,
        /// admin or compliance; repeat for both.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Give a user a role (admin or compliance).
    Grant { user: String, role: String },
    /// Take a role back.
    Revoke { user: String, role: String },
    /// List a user's devices.
    Devices {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Log one of a user's devices out: its tokens stop working at once and
    /// its sockets close.
    Logout { user: String, device_id: String },
}

struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(connection: &Connection, needs_token: bool) -> anyhow::Result<Api> {
        let base = connection.url.clone().or_else(|| std::env::var("CONFAB_URL").ok()).unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
        let token = match &connection.token_file {
            // Logging in needs no token (and the file may not exist yet).
            _ if !needs_token => None,
            Some(path) => {
                Some(std::fs::read_to_string(path).with_context(|| format!("could not read the token file `{}`", path.display()))?.trim().to_string())
            }
            None => std::env::var("CONFAB_TOKEN").ok().map(|token| token.trim().to_string()),
        };
        if needs_token && token.as_deref().is_none_or(str::is_empty) {
            bail!("no access token: run `confab admin login <username> > token` and pass --token-file token (or set CONFAB_TOKEN)");
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Api { base: base.trim_end_matches('/').to_string(), token, http })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response =
            request.send().await.map_err(|error| anyhow!("could not reach {url}: {error}; is `confab serve` running there? (--url or CONFAB_URL)"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text.clone())) };
        if !status.is_success() {
            let code = value["error"]["code"].as_str().unwrap_or("error");
            let message = value["error"]["message"].as_str().map(str::to_string).unwrap_or(text);
            bail!("{method} {path}: {} {code}: {message}", status.as_u16());
        }
        Ok(value)
    }

    /// A user id from a username or an id.
    async fn user_id(&self, user: &str) -> anyhow::Result<String> {
        if user.starts_with("u_") {
            return Ok(user.to_string());
        }
        let found = self.call(reqwest::Method::GET, &format!("/v1/users?username={}", encode(user)), None).await?;
        found["users"][0]["userId"].as_str().map(str::to_string).ok_or_else(|| anyhow!("no user is called `{user}`"))
    }
}

/// Percent-encodes a query or path value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn read_password() -> anyhow::Result<String> {
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password).context("could not read the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("no password on stdin: pipe it in, e.g. `confab admin login alice < password-file`");
    }
    Ok(password)
}

fn check_role(role: &str) -> anyhow::Result<&str> {
    match role {
        "admin" | "compliance" => Ok(role),
        other => bail!("`{other}` is not a role: use admin or compliance"),
    }
}

pub async fn run(connection: Connection, command: AdminCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let needs_token = !matches!(command, AdminCommand::Login { .. });
    let api = Api::new(&connection, needs_token)?;
    match command {
        AdminCommand::Login { username, device_name } => {
            let password = read_password()?;
            let session = api
                .call(Method::POST, "/v1/sessions", Some(json!({"username": username, "password": password, "deviceName": device_name, "platform": "cli"})))
                .await?;
            println!("{}", session["accessToken"].as_str().unwrap_or_default());
        }
        AdminCommand::CreateUser { username, display_name, roles } => {
            for role in &roles {
                check_role(role)?;
            }
            let password = read_password()?;
            let user = api.call(Method::POST, "/v1/users", Some(json!({"username": username, "password": password, "displayName": display_name}))).await?;
            let user_id = user["userId"].as_str().unwrap_or_default().to_string();
            for role in &roles {
                api.call(Method::POST, "/v1/admin/roles", Some(json!({"userId": user_id, "role": role}))).await?;
            }
            println!("created {username} ({user_id}){}", if roles.is_empty() { String::new() } else { format!(" with {}", roles.join(", ")) });
        }
        AdminCommand::Grant { user, role } => {
            let role = check_role(&role)?;
            let user_id = api.user_id(&user).await?;
            api.call(Method::POST, "/v1/admin/roles", Some(json!({"userId": user_id, "role": role}))).await?;
            println!("granted {role} to {user}");
        }
        AdminCommand::Revoke { user, role } => {
            let role = check_role(&role)?;
            let user_id = api.user_id(&user).await?;
            api.call(Method::DELETE, &format!("/v1/admin/roles/{}/{role}", encode(&user_id)), None).await?;
            println!("revoked {role} from {user}");
        }
        AdminCommand::Devices { user, json } => {
            let user_id = api.user_id(&user).await?;
            let listed = api.call(Method::GET, &format!("/v1/admin/users/{}/devices", encode(&user_id)), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                let rows: Vec<Vec<String>> = items(&listed["devices"])
                    .iter()
                    .map(|device| {
                        vec![
                            device["deviceId"].as_str().unwrap_or_default().to_string(),
                            device["deviceName"].as_str().unwrap_or("-").to_string(),
                            device["platform"].as_str().unwrap_or("-").to_string(),
                            if device["online"] == json!(true) { "online".to_string() } else { "-".to_string() },
                            if device["push"] == json!(true) { "yes".to_string() } else { "no".to_string() },
                        ]
                    })
                    .collect();
                print!("{}", table(&["DEVICE", "NAME", "PLATFORM", "SOCKET", "PUSH"], &rows));
            }
        }
        AdminCommand::Logout { user, device_id } => {
            let user_id = api.user_id(&user).await?;
            api.call(Method::DELETE, &format!("/v1/admin/users/{}/devices/{}", encode(&user_id), encode(&device_id)), None).await?;
            println!("logged out {device_id} of {user}");
        }
    }
    Ok(())
}

/// `confab status`: the server's parts, consumers and sizes.
pub async fn status(connection: Connection, json: bool) -> anyhow::Result<()> {
    let api = Api::new(&connection, true)?;
    let status = api.call(reqwest::Method::GET, "/v1/admin/status", None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    print!("{}", render_status(&status));
    Ok(())
}

fn render_status(status: &Value) -> String {
    let number = |value: &Value| value.as_u64().unwrap_or(0);
    let mut out = String::new();
    let ready: Vec<String> = items(&status["ready"])
        .iter()
        .map(|part| {
            let name = part["part"].as_str().unwrap_or("?");
            match part["problem"].as_str() {
                None => format!("{name} ok"),
                Some(problem) => format!("{name} NOT READY ({problem})"),
            }
        })
        .collect();
    out.push_str(&format!(
        "up {} · {} users and {} devices connected\nready: {}\n\n",
        duration(number(&status["uptimeSecs"])),
        number(&status["connected"]["users"]),
        number(&status["connected"]["devices"]),
        ready.join(", ")
    ));
    let rows: Vec<Vec<String>> = items(&status["consumers"])
        .iter()
        .map(|consumer| {
            let positions: Vec<String> = items(&consumer["partitions"])
                .iter()
                .map(|position| format!("p{} {}/{}", number(&position["partition"]), number(&position["committed"]), number(&position["end"])))
                .collect();
            vec![consumer["name"].as_str().unwrap_or("?").to_string(), number(&consumer["lag"]).to_string(), positions.join(" ")]
        })
        .collect();
    out.push_str(&table(&["CONSUMER", "LAG", "COMMITTED/END BY PARTITION"], &rows));
    let log = &status["log"];
    out.push_str(&format!(
        "\nlog: {} partitions, {} records in {} segments, {}\n",
        number(&log["partitions"]),
        number(&log["records"]),
        number(&log["segments"]),
        bytes(number(&log["bytes"]))
    ));
    let sink = &status["historySink"];
    if sink.is_object() {
        let failing: Vec<&str> = items(&sink["failing"]).iter().filter_map(Value::as_str).collect();
        out.push_str(&format!(
            "history sink: {} records behind, {} restarts{}\n",
            number(&sink["lag"]),
            number(&sink["restarts"]),
            if failing.is_empty() { String::new() } else { format!(", failing: {}", failing.join("; ")) }
        ));
    }
    let disk: Vec<String> =
        items(&status["disk"]).iter().map(|part| format!("{} {}", part["part"].as_str().unwrap_or("?"), bytes(number(&part["bytes"])))).collect();
    out.push_str(&format!("on disk: {}\n", disk.join(", ")));
    out
}

/// The elements of a JSON array (none for anything else).
fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            widths[index] = widths[index].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().enumerate().map(|(index, cell)| format!("{cell:<width$}", width = widths[index])).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_renders_every_part_as_a_table() {
        let status = json!({
            "uptimeSecs": 125, "connected": {"users": 2, "devices": 3},
            "ready": [{"part": "store", "ready": true, "problem": null}, {"part": "history_sink", "ready": false, "problem": "disk full"}],
            "consumers": [{"name": "fanout", "lag": 0, "partitions": [{"partition": 0, "committed": 10, "end": 10, "lag": 0}]},
                          {"name": "history", "lag": 7, "partitions": [{"partition": 0, "committed": 3, "end": 10, "lag": 7}]}],
            "log": {"partitions": 1, "records": 10, "segments": 1, "bytes": 2048},
            "historySink": {"lag": 7, "restarts": 1, "failing": ["partition 0: disk full"]},
            "disk": [{"part": "log", "bytes": 2048}, {"part": "state", "bytes": 5_000_000}],
        });
        let text = render_status(&status);
        assert!(text.starts_with("up 2m05s · 2 users and 3 devices connected\nready: store ok, history_sink NOT READY (disk full)\n"), "{text}");
        assert!(text.contains("CONSUMER  LAG  COMMITTED/END BY PARTITION\nfanout    0    p0 10/10\nhistory   7    p0 3/10\n"), "{text}");
        assert!(text.contains("log: 1 partitions, 10 records in 1 segments, 2.0 KiB\n"), "{text}");
        assert!(text.contains("history sink: 7 records behind, 1 restarts, failing: partition 0: disk full\n"), "{text}");
        assert!(text.contains("on disk: log 2.0 KiB, state 4.8 MiB\n"), "{text}");
    }

    #[test]
    fn values_in_paths_and_queries_are_encoded() {
        assert_eq!(encode("a b/ç"), "a%20b%2F%C3%A7");
        assert_eq!(encode("u_01abc-._~"), "u_01abc-._~");
    }
}
