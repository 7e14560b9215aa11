//! The device authorization grant (RFC 8628) of the development issuer,
//! which `metalmesh login --device` uses: the CLI asks for a device code,
//! shows the user code, and polls the token endpoint until someone approves
//! that code. Approval here is `metalmesh-testbed approve USER_CODE
//! --subject … --role …`, which writes a file into the issuer's directory:
//! whoever may write there (root on the testbed host) stands for the
//! identity provider's login page.

use super::{IssuerError, TokenRequest, io, token};
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How long a device code is good for, and how often the CLI may poll.
const EXPIRES_SECS: u64 = 600;
const INTERVAL_SECS: u64 = 1;
/// Letters a user types without ambiguity (no vowels, no 0/O, 1/I).
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// A device code waiting for approval: `<dir>/device/<device_code>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    user_code: String,
    client_id: String,
    expires_at: u64,
}

/// Who approved a login: `<dir>/device/approved/<device_code>.json` (keyed
/// by the device code, so an approval never outlives its login).
#[derive(Debug, Serialize, Deserialize)]
struct Approval {
    subject: String,
    role: String,
    projects: Vec<String>,
}

/// The answer to a device authorization request.
#[derive(Debug, Serialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: u64,
    pub interval: u64,
}

/// What the token endpoint answers a poll.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    Token(String),
    /// RFC 8628's error codes: `authorization_pending`, `expired_token`,
    /// `invalid_grant`, `invalid_client`.
    Refused(&'static str),
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn device_dir(dir: &Path) -> PathBuf {
    dir.join("device")
}

fn random(bytes: usize) -> Result<Vec<u8>, IssuerError> {
    let mut out = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| IssuerError::Key("no randomness".into()))?;
    Ok(out)
}

/// Starts a login for `client_id` (it must be the testbed's audience).
pub fn authorize(
    dir: &Path,
    url: &str,
    client_id: &str,
) -> Result<DeviceAuthorization, IssuerError> {
    use base64::Engine as _;
    let device_code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random(32)?);
    let letters: String = random(8)?
        .into_iter()
        .map(|b| char::from(USER_CODE_ALPHABET[usize::from(b) % USER_CODE_ALPHABET.len()]))
        .collect();
    let user_code = format!("{}-{}", &letters[..4], &letters[4..]);
    let pending_dir = device_dir(dir);
    std::fs::create_dir_all(&pending_dir).map_err(io(&pending_dir))?;
    sweep(dir)?;
    let path = pending_dir.join(format!("{device_code}.json"));
    let pending = Pending {
        user_code: user_code.clone(),
        client_id: client_id.to_string(),
        expires_at: now() + EXPIRES_SECS,
    };
    let text = serde_json::to_vec(&pending).map_err(|e| IssuerError::Token(e.to_string()))?;
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(DeviceAuthorization {
        device_code,
        verification_uri: format!("{url}/device"),
        verification_uri_complete: format!("{url}/device?user_code={user_code}"),
        user_code,
        expires_in: EXPIRES_SECS,
        interval: INTERVAL_SECS,
    })
}

/// Approves a pending login by its user code, as `subject` with `role`.
pub fn approve(
    dir: &Path,
    user_code: &str,
    subject: &str,
    role: &str,
    projects: &[String],
) -> Result<(), IssuerError> {
    let wanted = user_code.trim().to_uppercase();
    let pending = pending_logins(dir)?;
    let Some((path, _)) = pending
        .iter()
        .find(|(_, p)| p.user_code == wanted && p.expires_at > now())
    else {
        return Err(IssuerError::Token(format!(
            "no pending login with code {wanted}"
        )));
    };
    let device_code = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let approved = device_dir(dir).join("approved");
    std::fs::create_dir_all(&approved).map_err(io(&approved))?;
    let path = approved.join(format!("{device_code}.json"));
    let approval = Approval {
        subject: subject.to_string(),
        role: role.to_string(),
        projects: projects.to_vec(),
    };
    let text = serde_json::to_vec(&approval).map_err(|e| IssuerError::Token(e.to_string()))?;
    std::fs::write(&path, text).map_err(io(&path))
}

/// Removes logins that expired, and their approvals.
fn sweep(dir: &Path) -> Result<(), IssuerError> {
    for (path, pending) in pending_logins(dir)? {
        if pending.expires_at <= now() {
            let _ = std::fs::remove_file(&path);
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                let _ = std::fs::remove_file(
                    device_dir(dir)
                        .join("approved")
                        .join(format!("{stem}.json")),
                );
            }
        }
    }
    Ok(())
}

fn pending_logins(dir: &Path) -> Result<Vec<(PathBuf, Pending)>, IssuerError> {
    let pending_dir = device_dir(dir);
    let Ok(entries) = std::fs::read_dir(&pending_dir) else {
        return Ok(Vec::new());
    };
    Ok(entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| {
            let pending = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            Some((p, pending))
        })
        .collect())
}

/// The token endpoint's answer to a poll with `device_code`.
pub fn poll(
    dir: &Path,
    device_code: &str,
    client_id: &str,
    audience: &str,
) -> Result<Poll, IssuerError> {
    let valid = !device_code.is_empty()
        && device_code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Ok(Poll::Refused("invalid_grant"));
    }
    let path = device_dir(dir).join(format!("{device_code}.json"));
    let Ok(text) = std::fs::read(&path) else {
        return Ok(Poll::Refused("invalid_grant"));
    };
    let pending: Pending =
        serde_json::from_slice(&text).map_err(|e| IssuerError::Token(e.to_string()))?;
    if pending.client_id != client_id {
        return Ok(Poll::Refused("invalid_client"));
    }
    if pending.expires_at <= now() {
        let _ = std::fs::remove_file(&path);
        return Ok(Poll::Refused("expired_token"));
    }
    let approval_path = device_dir(dir)
        .join("approved")
        .join(format!("{device_code}.json"));
    let Ok(text) = std::fs::read(&approval_path) else {
        return Ok(Poll::Refused("authorization_pending"));
    };
    let approval: Approval =
        serde_json::from_slice(&text).map_err(|e| IssuerError::Token(e.to_string()))?;
    // One token per approval.
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&approval_path);
    Ok(Poll::Token(token(
        dir,
        &TokenRequest {
            subject: approval.subject,
            role: approval.role,
            projects: approval.projects,
            audience: audience.to_string(),
            lifetime_secs: 3600,
        },
    )?))
}
