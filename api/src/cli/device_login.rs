//! `metalmesh login --device`: the OAuth device authorization grant
//! (RFC 8628). The CLI asks the API where to log in (`/v1/auth`), asks the
//! issuer for a device code, shows the user code and the page to enter it
//! on, and polls the issuer's token endpoint until the user approved it in
//! a browser (anywhere: the terminal needs no browser), the code expired,
//! or `timeout` passed.

use crate::cli::client::ApiClient;
use anyhow::Context as _;
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize)]
struct LoginInfo {
    issuer: String,
    client_id: String,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    device_authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default = "default_interval")]
    interval: u64,
}

fn default_interval() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// A token of the API's issuer, obtained by the device flow.
pub fn device_token(api: &str, ca: Option<&Path>, timeout: Duration) -> anyhow::Result<String> {
    let info: LoginInfo = serde_json::from_value(
        ApiClient::new(api, "", ca)?
            .get("/v1/auth")
            .context("asking the API where to log in")?,
    )?;
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .build();
    let discovery: Discovery = http
        .get(&format!(
            "{}/.well-known/openid-configuration",
            info.issuer.trim_end_matches('/')
        ))
        .call()
        .with_context(|| format!("discovery of {}", info.issuer))?
        .into_json()?;
    let (Some(device_endpoint), Some(token_endpoint)) = (
        discovery.device_authorization_endpoint,
        discovery.token_endpoint,
    ) else {
        anyhow::bail!(
            "{} offers no device login (no device_authorization_endpoint); use --token",
            info.issuer
        );
    };
    let device: DeviceAuthorization = http
        .post(&device_endpoint)
        .send_form(&[("client_id", &info.client_id), ("scope", "openid")])
        .map_err(|e| anyhow::anyhow!("{device_endpoint}: {e}"))?
        .into_json()?;
    eprintln!(
        "To log in, open {} and enter the code {}",
        device
            .verification_uri_complete
            .as_deref()
            .unwrap_or(&device.verification_uri),
        device.user_code
    );
    // The issuer's numbers are bounded: at most an hour, polls 1-60 s apart.
    let deadline = Instant::now()
        + timeout
            .min(Duration::from_secs(device.expires_in))
            .min(Duration::from_secs(3600));
    let mut interval = Duration::from_secs(device.interval.clamp(1, 60));
    loop {
        std::thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the login was not approved in time (code {})",
                device.user_code
            );
        }
        let answer = http.post(&token_endpoint).send_form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", &device.device_code),
            ("client_id", &info.client_id),
        ]);
        let answer: TokenAnswer = match answer {
            Ok(response) => response.into_json()?,
            // Pending and refusals come as 400 with an error code.
            Err(ureq::Error::Status(_, response)) => response.into_json()?,
            Err(error) => return Err(anyhow::anyhow!("{token_endpoint}: {error}")),
        };
        match answer.error.as_deref() {
            None => {
                // An ID token names the user to the API by its audience;
                // some providers' access tokens are not JWTs at all.
                return answer
                    .id_token
                    .or(answer.access_token)
                    .ok_or_else(|| anyhow::anyhow!("{token_endpoint} answered no token"));
            }
            Some("authorization_pending") => {}
            Some("slow_down") => {
                interval = (interval + Duration::from_secs(5)).min(Duration::from_secs(60));
            }
            Some(other) => anyhow::bail!("the login was refused: {other}"),
        }
    }
}
