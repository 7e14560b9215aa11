//! The web view served by the API node, used in headless Chromium as a
//! person would: a project member logs in with a token of the testbed's
//! development issuer, sees both racks with their machines, allocates one
//! with the page's own form and watches it go from Waiting to Phoned Home
//! without reloading; the machine page shows its hardware and events, the
//! switch page its BGP sessions and LLDP neighbours. A `view` user gets no
//! allocate or free controls; another project's member does not see the
//! allocated machine. Screenshots are kept in
//! `target/test-artifacts/web-view/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::api::{IMAGE, alpha_and_web, token, two_racks_waiting};
use common::browser::Browser;
use common::uuid;
use metalmesh_testbed::testing::Guard;
use std::path::PathBuf;
use std::time::Duration;

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts/web-view")
}

/// The view was last drawn for `subject`.
fn drawn_for(subject: &str) -> String {
    format!("document.getElementById('view').dataset.subject === '{subject}'")
}

/// The page's row of `uuid` shows `state`.
fn row_state(uuid: &str, state: &str) -> String {
    format!(
        "(() => {{ const b = document.querySelector('tr[data-machine=\"{uuid}\"] [data-state]'); \
         return !!b && b.dataset.state === '{state}'; }})()"
    )
}

#[test]
fn the_web_view_shows_the_racks_live_and_only_what_the_user_may_see_and_do() {
    let guard = Guard::new();
    let run_dir = &guard.run_dir;
    let (_testbed, (admin, alice, bob)) = two_racks_waiting(&guard);
    alpha_and_web(run_dir, &admin, &alice);
    let ui = format!("{}/ui/", metalmesh_testbed::api::url());
    let target = uuid(1, 1);
    let mut browser = Browser::start(&artifacts());

    // Alice logs in through the page's form with her token.
    browser.navigate(&ui);
    assert!(
        browser.wait_for(
            "!document.getElementById('login').hidden",
            Duration::from_secs(30)
        ),
        "no login form at {}: {}",
        browser.eval("location.href"),
        browser.eval("document.body.innerText")
    );
    browser.eval(&format!(
        "document.getElementById('token').value = {}; \
         document.getElementById('login-form').requestSubmit(); true",
        serde_json::to_string(&alice).unwrap()
    ));
    // Two racks, a Waiting machine in each.
    assert!(
        browser.wait_for(
            &format!(
                "{} && document.querySelectorAll('section.rack').length === 2 && {} && {}",
                drawn_for("alice"),
                row_state(&uuid(1, 1), "Waiting"),
                row_state(&uuid(2, 1), "Waiting")
            ),
            Duration::from_secs(30)
        ),
        "two racks with a Waiting machine each not shown: {}",
        browser.eval("document.body.innerText")
    );
    assert_eq!(
        browser.eval("document.getElementById('who').textContent"),
        "alice (edit)"
    );
    browser.screenshot("1-racks-waiting");

    // She allocates the machine in rack 1 with the page's form; the page
    // is never reloaded (the marker set now survives) while it installs.
    browser.eval("window.notReloaded = true");
    browser.eval(&format!(
        "document.querySelector('tr[data-machine=\"{target}\"] button.allocate').click(); true"
    ));
    assert!(
        browser.wait_for(
            "!!document.querySelector('form.allocate select[name=network] option')",
            Duration::from_secs(15)
        ),
        "no allocate form: {}",
        browser.eval("document.body.innerText")
    );
    browser.eval(&format!(
        "(() => {{ const f = document.querySelector('form.allocate'); \
         f.hostname.value = 'web-ui'; f.image.value = '{IMAGE}'; \
         f.requestSubmit(); return true; }})()"
    ));
    browser.screenshot("2-allocated");
    assert!(
        browser.wait_for(&row_state(&target, "Phoned Home"), Duration::from_secs(240)),
        "the row never showed Phoned Home: {}",
        browser.eval("document.body.innerText")
    );
    assert_eq!(
        browser.eval("window.notReloaded === true"),
        true,
        "the page was reloaded"
    );
    let row = browser
        .eval(&format!(
            "document.querySelector('tr[data-machine=\"{target}\"]').innerText"
        ))
        .to_string();
    assert!(row.contains("alpha") && row.contains("web-ui"), "{row}");
    browser.screenshot("3-phoned-home");

    // The machine page: hardware and the event timeline.
    browser.eval(&format!("location.hash = '#/machine/{target}'; true"));
    assert!(
        browser.wait_for(
            "document.querySelectorAll('ol.timeline li').length >= 4 && \
             document.body.innerText.includes('CPUs')",
            Duration::from_secs(15)
        ),
        "machine page: {}",
        browser.eval("document.body.innerText")
    );
    let timeline = browser
        .eval("document.querySelector('ol.timeline').innerText")
        .to_string();
    for event in ["Phoned Home", "Installing", "Waiting"] {
        assert!(timeline.contains(event), "{event} missing: {timeline}");
    }
    browser.screenshot("4-machine");

    // The switch page: its BGP sessions with the spines, its ports.
    browser.eval("location.hash = '#/switch/leaf1'; true");
    assert!(
        browser.wait_for(
            "!!document.querySelector('table.bgp') && \
             document.querySelector('table.bgp').innerText.includes('Established')",
            Duration::from_secs(30)
        ),
        "switch page: {}",
        browser.eval("document.body.innerText")
    );
    let ports = browser
        .eval("document.querySelector('table.ports').innerText")
        .to_string();
    assert!(
        ports.contains("spine1") && ports.contains(&target),
        "{ports}"
    );
    assert_eq!(browser.eval("window.notReloaded === true"), true);
    browser.screenshot("5-switch");

    // A `view` member of alpha sees the machines, and no controls.
    let viewer = token(run_dir, "vera", "view", Some("alpha"));
    browser.navigate(&format!("{ui}#token={viewer}"));
    assert!(
        browser.wait_for(
            &format!(
                "{} && {} && {}",
                drawn_for("vera"),
                row_state(&target, "Phoned Home"),
                row_state(&uuid(2, 1), "Waiting")
            ),
            Duration::from_secs(30)
        ),
        "viewer: {}",
        browser.eval("document.body.innerText")
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('button.allocate, button.free').length"),
        0,
        "a view user is offered allocate/free"
    );
    assert_eq!(
        browser.eval("location.hash"),
        "#/",
        "the token stays in the address bar"
    );
    browser.screenshot("6-viewer");

    // Bob (project beta) sees the free machine, not alpha's.
    browser.eval("sessionStorage.clear(); true");
    browser.navigate(&format!("{ui}#token={bob}"));
    assert!(
        browser.wait_for(
            &format!(
                "{} && {}",
                drawn_for("bob"),
                row_state(&uuid(2, 1), "Waiting")
            ),
            Duration::from_secs(30)
        ),
        "bob: {}",
        browser.eval("document.body.innerText")
    );
    assert_eq!(
        browser.eval(&format!(
            "!!document.querySelector('tr[data-machine=\"{target}\"]')"
        )),
        false,
        "bob sees alpha's machine: {}",
        browser.eval("document.body.innerText")
    );
    assert!(
        !browser
            .eval("document.body.innerText")
            .to_string()
            .contains("web-ui"),
        "alpha's hostname shown to bob"
    );
    browser.screenshot("7-other-project");
}
