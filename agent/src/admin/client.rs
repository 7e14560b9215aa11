//! The client side of the admin API, used by `metalmesh-agent` subcommands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{Request, Response};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {path}: {source} (is metalmesh-agent running? set --socket or METALMESH_AGENT_SOCKET)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin API I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agent closed the connection without answering")]
    NoAnswer,
    #[error("unreadable answer from the agent: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the agent refused the request: {0}")]
    Refused(String),
}

/// Sends one request and returns the response.
pub async fn request(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        write.write_all(&line).await?;
        let mut answer = String::new();
        if BufReader::new(read).read_line(&mut answer).await? == 0 {
            return Err(ClientError::NoAnswer);
        }
        match serde_json::from_str::<Response>(&answer)? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            response => Ok(response),
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout(TIMEOUT))?
}
