//! Session lifetimes on the injected clock: access-token expiry, the 30-minute idle timeout
//! (for access tokens and for refreshing), refresh rotation and reuse detection, and the
//! lockout after five failed logins with its 15-minute release.

use auth::{AuthConfig, AuthError, NewUser};

use super::{Fixture, fixture, fixture_with, oauth_error};

async fn system_token(f: &Fixture) -> String {
    let (id, secret) = f.auth.create_client("lab", "system/*.read", None, None).await.unwrap();
    let body =
        f.token(&[("grant_type", "client_credentials"), ("client_id", &id), ("client_secret", &secret)]).await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

async fn resident(f: &Fixture) {
    f.auth
        .create_user(NewUser {
            username: "wang.fang".into(),
            role: "resident".into(),
            password: Some("Pass#word1".into()),
            patients: vec!["p1".into()],
            id_number: Some("11010519491231002X".into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Logs the resident in: (access token, refresh token).
async fn login(f: &Fixture) -> (String, String) {
    let body = f.token(&[("grant_type", "password"), ("username", "wang.fang"), ("password", "Pass#word1")]).await;
    let body = body.unwrap();
    (body["access_token"].as_str().unwrap().to_string(), body["refresh_token"].as_str().unwrap().to_string())
}

async fn refresh(f: &Fixture, token: &str) -> Result<(String, String), (u16, &'static str, String)> {
    match f.token(&[("grant_type", "refresh_token"), ("refresh_token", token)]).await {
        Ok(body) => Ok((
            body["access_token"].as_str().unwrap().to_string(),
            body["refresh_token"].as_str().unwrap().to_string(),
        )),
        Err(e) => Err(oauth_error(Err(e))),
    }
}

fn unauthenticated(result: Result<auth::Session, AuthError>) -> String {
    match result {
        Err(AuthError::Unauthenticated(m)) => m,
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test]
async fn access_tokens_expire_after_fifteen_minutes() {
    let f = fixture();
    let token = system_token(&f).await;
    let session = f.auth.authenticate(&token).await.unwrap();
    assert_eq!(session.expires, f.now() + 15 * 60);
    f.advance(14 * 60);
    f.auth.authenticate(&token).await.unwrap();
    f.advance(59);
    f.auth.authenticate(&token).await.expect("valid in its last second (and served from the cache)");
    f.advance(1);
    let message = unauthenticated(f.auth.authenticate(&token).await);
    assert!(message.contains("expired"), "{message}");
    assert_eq!(f.auth.introspect(&token).await.unwrap()["active"], false);
}

#[tokio::test]
async fn sessions_unused_for_thirty_minutes_end() {
    // Access tokens longer-lived than the idle timeout, so that idleness is what ends them.
    let f = fixture_with(AuthConfig { access_ttl: 4 * 3600, ..AuthConfig::default() });
    let token = system_token(&f).await;
    for _ in 0..4 {
        f.advance(29 * 60);
        f.auth.authenticate(&token).await.expect("used every 29 minutes, the session stays open");
    }
    f.advance(30 * 60 + 1);
    let message = unauthenticated(f.auth.authenticate(&token).await);
    assert!(message.contains("inactivity"), "{message}");
    let message = unauthenticated(f.auth.authenticate(&token).await);
    assert!(message.contains("unknown or revoked"), "a timed-out token is gone for good: {message}");
}

#[tokio::test]
async fn idle_sessions_cannot_be_refreshed() {
    let f = fixture();
    resident(&f).await;
    let (_, refresh_token) = login(&f).await;
    f.advance(30 * 60 + 1);
    let (status, code, message) = refresh(&f, &refresh_token).await.unwrap_err();
    assert_eq!((status, code), (400, "invalid_grant"));
    assert!(message.contains("timed out after 30 minutes"), "{message}");

    // Activity on the access token keeps the session alive for refreshing.
    let (access, refresh_token) = login(&f).await;
    f.advance(10 * 60);
    f.auth.authenticate(&access).await.unwrap();
    f.advance(25 * 60);
    let (access, refresh_token) = refresh(&f, &refresh_token).await.expect("idle 25 minutes, 35 since login");
    f.auth.authenticate(&access).await.unwrap();
    f.advance(31 * 60);
    assert!(refresh(&f, &refresh_token).await.unwrap_err().2.contains("timed out"));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_session() {
    let f = fixture();
    resident(&f).await;
    let (a1, r1) = login(&f).await;
    f.advance(60);
    let (a2, r2) = refresh(&f, &r1).await.unwrap();
    assert_ne!(r1, r2);
    f.advance(60);
    let (a3, r3) = refresh(&f, &r2).await.unwrap();
    f.auth.authenticate(&a3).await.unwrap();

    // r1 again: a copy is in someone else's hands. Everything descending from it ends.
    let (status, code, message) = refresh(&f, &r1).await.unwrap_err();
    assert_eq!((status, code), (400, "invalid_grant"));
    assert!(message.contains("already used") && message.contains("revoked"), "{message}");
    for access in [&a1, &a2, &a3] {
        unauthenticated(f.auth.authenticate(access).await);
    }
    for token in [&r1, &r2, &r3] {
        assert!(refresh(&f, token).await.unwrap_err().2.contains("unknown, expired or revoked"));
    }
    let log = f.auth.store().audit_read(0, 1000).await.unwrap();
    assert!(log.iter().any(|e| e.record.action == "revoke" && e.record.detail.contains("refresh token reused")));
}

#[tokio::test]
async fn a_busy_session_refreshes_for_hours_but_each_refresh_token_expires() {
    let f = fixture();
    resident(&f).await;
    let (access, refresh_token) = login(&f).await;
    let mut refresh_token = refresh_token;
    for _ in 0..31 {
        f.advance(15 * 60);
        (_, refresh_token) = refresh(&f, &refresh_token).await.unwrap();
    }
    unauthenticated(f.auth.authenticate(&access).await);
    f.advance(8 * 3600);
    assert!(refresh(&f, &refresh_token).await.unwrap_err().2.contains("unknown, expired or revoked"));
}

#[tokio::test]
async fn five_failed_logins_lock_the_account_for_fifteen_minutes() {
    let f = fixture();
    let (_, _, totp) = f
        .auth
        .create_user(NewUser {
            username: "dr.lin".into(),
            role: "doctor".into(),
            password: Some("Pass#word1".into()),
            organization: Some("h1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let secret = crypto::totp::base32_decode(&totp.unwrap()).unwrap();
    let f = &f;
    let attempt = |password: &'static str| {
        let code = crypto::totp::generate(&secret, f.now() as u64, 6);
        async move {
            f.token(&[("grant_type", "password"), ("username", "dr.lin"), ("password", password), ("totp", &code)])
                .await
        }
    };
    // Four failures, then a success, reset the count.
    for _ in 0..4 {
        assert!(oauth_error(attempt("wrong").await).2.starts_with("wrong user name, password or TOTP code"));
    }
    attempt("Pass#word1").await.unwrap();
    for _ in 0..4 {
        attempt("wrong").await.unwrap_err();
    }
    attempt("Pass#word1").await.expect("the count was reset by the success");
    for _ in 0..5 {
        attempt("wrong").await.unwrap_err();
    }
    let (_, code, message) = oauth_error(attempt("Pass#word1").await);
    assert_eq!(code, "invalid_grant");
    assert!(message.contains("locked for 15 more minutes"), "{message}");
    f.advance(15 * 60 - 1);
    let (_, _, message) = oauth_error(attempt("Pass#word1").await);
    assert!(message.contains("locked for 1 more minutes"), "{message}");
    f.advance(1);
    attempt("Pass#word1").await.expect("released after 15 minutes");
}

#[tokio::test]
async fn sms_codes_are_rate_limited_per_number_and_wrong_codes_carry_over() {
    let f = fixture();
    f.auth
        .create_user(NewUser {
            username: "li.na".into(),
            role: "resident".into(),
            phone: Some("13800138000".into()),
            id_number: Some("11010519491231002X".into()),
            patients: vec!["p2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let wrong = || f.token(&[("grant_type", auth::SMS_GRANT), ("phone", "13800138000"), ("code", "000000x")]);
    f.auth.send_sms_code("13800138000").await.unwrap();
    let again = f.auth.send_sms_code("13800138000").await.unwrap_err();
    assert!(matches!(again, AuthError::OAuth { status: 429, .. }), "{again:?}");
    // An unknown number is limited the same way (the reply does not tell which numbers exist).
    f.auth.send_sms_code("13900139000").await.unwrap();
    assert!(matches!(f.auth.send_sms_code("13900139000").await, Err(AuthError::OAuth { status: 429, .. })));
    // Wrong codes count across codes: after ten in a day no new code is sent.
    for round in 0..2 {
        for _ in 0..5 {
            oauth_error(wrong().await);
        }
        f.advance(61);
        let next = f.auth.send_sms_code("13800138000").await;
        if round == 0 {
            next.unwrap();
        } else {
            assert!(matches!(next, Err(AuthError::OAuth { status: 429, .. })), "{next:?}");
        }
    }
    f.advance(86_400);
    f.auth.send_sms_code("13800138000").await.expect("a new day, a new allowance");
}

#[tokio::test]
async fn a_refresh_takes_the_account_as_it_is_now() {
    let f = fixture();
    resident(&f).await;
    let (_, refresh_token) = login(&f).await;
    // The guardian now also acts for a child; the next refresh carries both.
    f.auth.set_user("wang.fang", None, Some(vec!["p1".into(), "p9".into()])).await.unwrap();
    let (access, refresh_token) = refresh(&f, &refresh_token).await.unwrap();
    let session = f.auth.authenticate(&access).await.unwrap();
    assert_eq!(session.principal.patients, ["p1", "p9"]);
    // A disabled account cannot refresh.
    f.auth.set_user("wang.fang", Some(false), None).await.unwrap();
    let (status, code, message) = refresh(&f, &refresh_token).await.unwrap_err();
    assert_eq!((status, code), (400, "invalid_grant"));
    assert!(message.contains("disabled"), "{message}");
    assert!(f.auth.set_user("nobody", Some(false), None).await.is_err());
}

#[tokio::test]
async fn expired_tokens_are_purged_and_live_ones_kept() {
    let f = fixture();
    resident(&f).await;
    let (old_access, _) = login(&f).await;
    f.advance(9 * 3600); // past the access and refresh lifetimes
    let (live_access, live_refresh) = login(&f).await;
    let purged = f.auth.purge_expired().await.unwrap();
    assert_eq!(purged, 2, "the first session's access and refresh token");
    unauthenticated(f.auth.authenticate(&old_access).await);
    f.auth.authenticate(&live_access).await.expect("the live session survives");
    refresh(&f, &live_refresh).await.expect("and can refresh");
    assert_eq!(f.auth.purge_expired().await.unwrap(), 0, "nothing else is expired");
}

#[tokio::test]
async fn introspection_does_not_keep_an_idle_session_alive() {
    let f = fixture_with(AuthConfig { access_ttl: 4 * 3600, ..AuthConfig::default() });
    let token = system_token(&f).await;
    f.advance(20 * 60);
    assert_eq!(f.auth.introspect(&token).await.unwrap()["active"], true);
    // 40 minutes without a request: the introspection at 20 did not count as use.
    f.advance(20 * 60);
    assert_eq!(f.auth.introspect(&token).await.unwrap()["active"], false);
    unauthenticated(f.auth.authenticate(&token).await);
}
