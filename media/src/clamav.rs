//! A client of clamd's `INSTREAM` command over its local socket: the
//! bytes go in chunks, each with its length as 4 big-endian bytes, ended
//! by a zero length; clamd answers `stream: OK`, `stream: <name> FOUND`,
//! or `... ERROR` (`INSTREAM size limit exceeded` when the file is over
//! its `StreamMaxLength`), ended by a NUL (the `z` form of the command).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Error, Result};

const CHUNK_BYTES: usize = 64 * 1024;
/// clamd's answers are one short line.
const REPLY_MAX_BYTES: usize = 4096;

#[derive(Debug, Clone)]
pub struct Clamav {
    pub socket: PathBuf,
    pub timeout: Duration,
}

/// What clamd found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    Clean,
    /// The signature's name.
    Infected(String),
}

impl Clamav {
    pub async fn scan(&self, bytes: &[u8]) -> Result<Scan> {
        match tokio::time::timeout(self.timeout, self.exchange(bytes)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Scanner(format!("clamd at `{}` did not answer within {:?}", self.socket.display(), self.timeout))),
        }
    }

    async fn exchange(&self, bytes: &[u8]) -> Result<Scan> {
        let failed = |error: std::io::Error| Error::Scanner(format!("clamd at `{}`: {error}", self.socket.display()));
        let mut stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(failed)?;
        stream.write_all(b"zINSTREAM\0").await.map_err(failed)?;
        for chunk in bytes.chunks(CHUNK_BYTES) {
            stream.write_all(&(chunk.len() as u32).to_be_bytes()).await.map_err(failed)?;
            stream.write_all(chunk).await.map_err(failed)?;
        }
        stream.write_all(&0u32.to_be_bytes()).await.map_err(failed)?;
        stream.flush().await.map_err(failed)?;
        let mut reply = Vec::new();
        let mut buffer = [0u8; 512];
        loop {
            let read = stream.read(&mut buffer).await.map_err(failed)?;
            if read == 0 {
                break;
            }
            reply.extend_from_slice(&buffer[..read]);
            if reply.contains(&0) || reply.len() > REPLY_MAX_BYTES {
                break;
            }
        }
        parse_reply(&reply)
    }
}

fn parse_reply(reply: &[u8]) -> Result<Scan> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\0', '\n']).trim();
    let verdict = text.strip_prefix("stream:").map(str::trim).unwrap_or(text);
    if verdict == "OK" {
        return Ok(Scan::Clean);
    }
    if let Some(name) = verdict.strip_suffix(" FOUND") {
        return Ok(Scan::Infected(name.trim().to_string()));
    }
    Err(Error::Scanner(format!("clamd answered `{verdict}`")))
}

/// A stand-in clamd for tests and benchmarks: it speaks the `zINSTREAM`
/// framing exactly (and checks it), answers `FOUND` (as `Test.Evil`) when
/// the bytes hold `EVIL!` and `OK` otherwise, and, given `release`, holds
/// each answer until it is set (so a test can watch a file stay pending).
pub mod fake {
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub const SIGNATURE: &str = "Test.Evil";

    /// Listens on `socket` (a Unix socket path) until the runtime ends.
    pub fn serve(socket: &Path, release: Option<tokio::sync::watch::Receiver<bool>>) -> std::io::Result<()> {
        let listener = tokio::net::UnixListener::bind(socket)?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let release = release.clone();
                tokio::spawn(async move {
                    let Some(body) = read_stream(&mut stream).await else { return };
                    if let Some(mut release) = release {
                        let _ = release.wait_for(|released| *released).await;
                    }
                    let reply =
                        if body.windows(5).any(|window| window == b"EVIL!") { format!("stream: {SIGNATURE} FOUND\0") } else { "stream: OK\0".to_string() };
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Ok(())
    }

    /// The command and the chunks, or None (and the connection dropped)
    /// when the framing is not clamd's.
    async fn read_stream(stream: &mut tokio::net::UnixStream) -> Option<Vec<u8>> {
        let mut command = [0u8; 10];
        stream.read_exact(&mut command).await.ok()?;
        if &command != b"zINSTREAM\0" {
            return None;
        }
        let mut body = Vec::new();
        loop {
            let mut length = [0u8; 4];
            stream.read_exact(&mut length).await.ok()?;
            let length = u32::from_be_bytes(length) as usize;
            if length == 0 {
                return Some(body);
            }
            if length > super::CHUNK_BYTES {
                return None;
            }
            let mut chunk = vec![0u8; length];
            stream.read_exact(&mut chunk).await.ok()?;
            body.extend(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_as_clamd_writes_them() {
        assert_eq!(parse_reply(b"stream: OK\0").unwrap(), Scan::Clean);
        assert_eq!(parse_reply(b"stream: Eicar-Signature FOUND\0").unwrap(), Scan::Infected("Eicar-Signature".into()));
        assert!(parse_reply(b"INSTREAM size limit exceeded. ERROR\0").unwrap_err().to_string().contains("size limit"));
    }

    /// A stand-in clamd that checks the framing and answers by content.
    #[tokio::test]
    async fn the_stream_is_framed_in_chunks_ended_by_a_zero_length() {
        let folder = tempfile::tempdir().unwrap();
        let socket = folder.path().join("clamd.sock");
        fake::serve(&socket, None).unwrap();
        let clamav = Clamav { socket, timeout: Duration::from_secs(5) };
        let mut big = vec![b'a'; 200_000];
        assert_eq!(clamav.scan(&big).await.unwrap(), Scan::Clean);
        big.extend_from_slice(b"EVIL!");
        assert_eq!(clamav.scan(&big).await.unwrap(), Scan::Infected("Test.Evil".into()));
        let missing = Clamav { socket: folder.path().join("absent"), timeout: Duration::from_secs(1) };
        assert!(missing.scan(b"x").await.unwrap_err().to_string().contains("absent"));
    }
}
