//! The format of a `/metrics` answer, negotiated like Prometheus's own
//! client libraries do: OpenMetrics for a scraper that asks for it
//! (Prometheus does), the classic text format (0.0.4) for everyone else
//! (`curl`, `promtool check metrics`, older scrapers).
//!
//! The daemons encode OpenMetrics; the classic format differs only in
//! naming a counter's family by its sample name (`x_total`), and in having
//! no `# UNIT` or `# EOF` lines.

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type and body to answer a scrape whose `Accept` header is
/// `accept`, from an OpenMetrics exposition.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS, openmetrics)
    } else {
        (CLASSIC, classic(&openmetrics))
    }
}

/// The classic text format of an OpenMetrics exposition.
pub fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    // A family's TYPE comes after its HELP: find the counters first.
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# HELP m_requests Requests.\n# TYPE m_requests counter\n\
        m_requests_total{kind=\"a\"} 3\n# HELP m_seconds Time.\n# TYPE m_seconds histogram\n\
        # UNIT m_seconds seconds\nm_seconds_sum 1.0\nm_seconds_count 1\n\
        m_seconds_bucket{le=\"+Inf\"} 1\n# HELP m_up Up.\n# TYPE m_up gauge\nm_up 1\n# EOF\n";

    #[test]
    fn counters_are_named_by_their_samples_and_openmetrics_lines_go() {
        let text = classic(SAMPLE);
        assert_eq!(
            text,
            "# HELP m_requests_total Requests.\n# TYPE m_requests_total counter\n\
             m_requests_total{kind=\"a\"} 3\n# HELP m_seconds Time.\n# TYPE m_seconds histogram\n\
             m_seconds_sum 1.0\nm_seconds_count 1\nm_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP m_up Up.\n# TYPE m_up gauge\nm_up 1\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics() {
        let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            negotiate(Some(accept), SAMPLE.into()),
            (OPENMETRICS, SAMPLE.to_string())
        );
        assert_eq!(negotiate(None, SAMPLE.into()).0, CLASSIC);
        assert_eq!(negotiate(Some("*/*"), SAMPLE.into()).0, CLASSIC);
    }
}
