//! Ready purgers for Fastly and Cloudflare, speaking their documented purge APIs over HTTPS
//! (or any base URL: tests point them at a local server).

use std::time::Duration;

use serde_json::json;

use super::{Purge, PurgeError, PurgeFuture, Purger};

/// How long one purge request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTPS client, or why it could not start (its TLS backend): every purge then fails with
/// that reason (counted, logged, retried) instead of a panic here. It follows no redirect: one
/// would send the API token to the address it names, and purge nothing at the CDN.
fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| format!("no HTTPS client: {err}"))
}

fn started(client: &Result<reqwest::Client, String>) -> Result<&reqwest::Client, PurgeError> {
    client.as_ref().map_err(|why| PurgeError::new(why.clone()))
}

/// `Ok` for a 2xx answer, else the status and the start of the body: refused for a `4xx` other
/// than `408` and `429` (sent again, it would be refused again), a failure otherwise (a `3xx`,
/// never followed, included).
async fn accepted(sent: Result<reqwest::Response, reqwest::Error>) -> Result<String, PurgeError> {
    let response = sent.map_err(|err| PurgeError::new(err.to_string()))?;
    let status = response.status();
    let location = response.headers().get(reqwest::header::LOCATION).cloned();
    let body = response.text().await.unwrap_or_default();
    let start = body.chars().take(200).collect::<String>();
    if status.is_success() {
        Ok(body)
    } else if status.is_redirection() {
        let to = location.as_ref().and_then(|l| l.to_str().ok()).unwrap_or("nowhere");
        Err(PurgeError::new(format!("{status} to {to}: redirects are not followed")))
    } else if status.is_client_error()
        && status != reqwest::StatusCode::REQUEST_TIMEOUT
        && status != reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Err(PurgeError::refused(format!("{status}: {start}")))
    } else {
        Err(PurgeError::new(format!("{status}: {start}")))
    }
}

/// Fastly: tags by surrogate key (`POST /service/{id}/purge`, `Surrogate-Key: a b …`, 256 a
/// request) and URLs one request each, concurrently (`POST /purge/{host}/{path}`),
/// authenticated by `Fastly-Key`.
///
/// ```
/// use cache_runtime::cdn::Fastly;
///
/// let cache = cache_runtime::Cache::builder()
///     .purger(Fastly::new("SU1Z0isxPaozGVKXdv0eY", "a Fastly API token").soft())
///     .build()
///     .unwrap();
/// # drop(cache);
/// ```
#[derive(Debug, Clone)]
pub struct Fastly {
    base: String,
    service: String,
    token: String,
    soft: bool,
    client: Result<reqwest::Client, String>,
}

impl Fastly {
    /// Fastly's API (`https://api.fastly.com`) for service `service_id`, with an API token
    /// allowed to purge it.
    pub fn new(service_id: impl Into<String>, api_token: impl Into<String>) -> Self {
        Fastly {
            base: "https://api.fastly.com".to_owned(),
            service: service_id.into(),
            token: api_token.into(),
            soft: false,
            client: client(),
        }
    }

    /// Another API address (a proxy, or a test server); no trailing slash needed.
    pub fn base_url(mut self, base: impl Into<String>) -> Self {
        self.base = base.into().trim_end_matches('/').to_owned();
        self
    }

    /// Soft purges (`Fastly-Soft-Purge: 1`): objects are marked stale, not removed, so Fastly
    /// may still serve them with `stale-while-revalidate` / `stale-if-error`.
    pub fn soft(mut self) -> Self {
        self.soft = true;
        self
    }

    fn post(&self, url: String) -> Result<reqwest::RequestBuilder, PurgeError> {
        let request =
            started(&self.client)?.post(url).header("Fastly-Key", &self.token).header("Accept", "application/json");
        Ok(if self.soft { request.header("Fastly-Soft-Purge", "1") } else { request })
    }
}

impl Purger for Fastly {
    fn purge<'a>(&'a self, purge: &'a Purge) -> PurgeFuture<'a> {
        Box::pin(async move {
            for keys in purge.tags.chunks(256) {
                let url = format!("{}/service/{}/purge", self.base, self.service);
                accepted(self.post(url)?.header("Surrogate-Key", keys.join(" ")).send().await).await?;
            }
            // One request per URL (Fastly's API), all at once.
            let each = purge.urls.iter().map(|cached| async move {
                let without_scheme = cached.split_once("://").map_or(cached.as_str(), |(_, rest)| rest);
                let url = format!("{}/purge/{without_scheme}", self.base);
                accepted(self.post(url)?.send().await).await
            });
            // A failure before a refusal: the purge is then retried, not split.
            let failed = crate::sync::join_all(each).await.into_iter().filter_map(Result::err);
            match failed.min_by_key(PurgeError::is_refused) {
                Some(err) => Err(err),
                None => Ok(()),
            }
        })
    }
}

/// Cloudflare: `POST /zones/{zone}/purge_cache` with `{"tags": […]}` and `{"files": […]}` (30
/// a request), authenticated by an API token (`Authorization: Bearer`); an answer whose
/// `success` is not `true` is a failure.
///
/// ```
/// use cache_runtime::cdn::Cloudflare;
///
/// let cache = cache_runtime::Cache::builder()
///     .purger(Cloudflare::new("023e105f4ecef8ad9ca31a8372d0c353", "a Cloudflare API token"))
///     .build()
///     .unwrap();
/// # drop(cache);
/// ```
#[derive(Debug, Clone)]
pub struct Cloudflare {
    base: String,
    zone: String,
    token: String,
    client: Result<reqwest::Client, String>,
}

impl Cloudflare {
    /// Cloudflare's API (`https://api.cloudflare.com/client/v4`) for zone `zone_id`, with an
    /// API token allowed to purge its cache.
    pub fn new(zone_id: impl Into<String>, api_token: impl Into<String>) -> Self {
        Cloudflare {
            base: "https://api.cloudflare.com/client/v4".to_owned(),
            zone: zone_id.into(),
            token: api_token.into(),
            client: client(),
        }
    }

    /// Another API address (a proxy, or a test server); no trailing slash needed.
    pub fn base_url(mut self, base: impl Into<String>) -> Self {
        self.base = base.into().trim_end_matches('/').to_owned();
        self
    }

    async fn send(&self, body: serde_json::Value) -> Result<(), PurgeError> {
        let url = format!("{}/zones/{}/purge_cache", self.base, self.zone);
        let request = started(&self.client)?.post(url).bearer_auth(&self.token).json(&body);
        let answer = accepted(request.send().await).await?;
        match serde_json::from_str::<serde_json::Value>(&answer) {
            Ok(answer) if answer["success"] == true => Ok(()),
            _ => Err(PurgeError::new(format!("not a success: {}", answer.chars().take(200).collect::<String>()))),
        }
    }
}

impl Purger for Cloudflare {
    fn purge<'a>(&'a self, purge: &'a Purge) -> PurgeFuture<'a> {
        Box::pin(async move {
            for tags in purge.tags.chunks(30) {
                self.send(json!({ "tags": tags })).await?;
            }
            for files in purge.urls.chunks(30) {
                self.send(json!({ "files": files })).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::accepted;

    /// What each status of a purge API's answer is: accepted, refused (not retried), or a
    /// failure (retried; a redirect included, never followed).
    #[tokio::test]
    async fn statuses_are_accepted_refused_or_failures() {
        for (status, outcome) in [
            (200, "accepted"),
            (204, "accepted"),
            (400, "refused"),
            (401, "refused"),
            (403, "refused"),
            (404, "refused"),
            (408, "failed"),
            (429, "failed"),
            (301, "failed"),
            (308, "failed"),
            (500, "failed"),
            (503, "failed"),
        ] {
            let answer = axum::http::Response::builder().status(status).body("why").unwrap();
            let got = match accepted(Ok(reqwest::Response::from(answer))).await {
                Ok(_) => "accepted",
                Err(err) if err.is_refused() => "refused",
                Err(_) => "failed",
            };
            assert_eq!(got, outcome, "{status}");
        }
    }
}
