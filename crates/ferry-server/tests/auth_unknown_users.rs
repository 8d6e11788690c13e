//! Issue 12: nothing tells which user names exist. An unknown name's login
//! is drawn from what real users get: iteration count, salt, message,
//! round trips and timing, over 1,000 logins each, also after the
//! configured count changed (users added with another count than the
//! server's default).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::scram::{ScramClient, ServerFirst, Verifier};
use ferry_server::auth::admin::new_user;
use ferry_server::auth::{AuthError, Authenticator, MemoryUserStore, Throttle, ThrottleConfig, UserStore};

const LOGINS: usize = 1000;

fn authenticator(users: &[(&str, u32)], default_iterations: u32) -> Authenticator {
    let store: Arc<dyn UserStore> = Arc::new(MemoryUserStore::default());
    for (i, (name, iterations)) in users.iter().enumerate() {
        let salt = [i as u8 + 1; 16];
        store.add(new_user(name, Verifier::new("secret pw", &salt, *iterations).unwrap())).unwrap();
    }
    // No delays or bans: this measures the answers themselves.
    let throttle =
        Throttle::new(ThrottleConfig { free_failures: u32::MAX, ban_after: u32::MAX, ..ThrottleConfig::default() });
    Authenticator::new(store, throttle, [9; 32], default_iterations)
}

/// One whole login with a wrong password: the server-first it got, the
/// error, the round trips and the server's time.
struct Observed {
    iterations: u32,
    salt_len: usize,
    error: String,
    round_trips: usize,
    server_time: Duration,
}

fn login(auth: &Authenticator, user: &str, n: usize) -> Observed {
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let client = ScramClient::new(user, "wrong password", &format!("nonce{n}")).unwrap();
    let started = Instant::now();
    let attempt = auth.begin(&client.client_first(), ip, Instant::now()).unwrap();
    let mut server_time = started.elapsed();
    let server_first = attempt.server_first().to_string();
    let parsed = ServerFirst::parse(&server_first).unwrap();
    // A wrong password's proof is as good as any 32 bytes: no PBKDF2 needed here.
    let client_final = format!("c=biws,r={},p={}", parsed.nonce, "A".repeat(43) + "=");
    let started = Instant::now();
    let result = attempt.finish(&client_final, Instant::now());
    server_time += started.elapsed();
    let error = match result {
        Err(e @ AuthError::Failed) => e.to_string(),
        other => panic!("{user}: {other:?}"),
    };
    Observed { iterations: parsed.iterations, salt_len: parsed.salt.len(), error, round_trips: 2, server_time }
}

fn histogram(obs: &[Observed]) -> BTreeMap<u32, usize> {
    let mut h = BTreeMap::new();
    for o in obs {
        *h.entry(o.iterations).or_insert(0) += 1;
    }
    h
}

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

#[test]
fn unknown_names_get_what_real_users_get_after_the_configured_count_changed() {
    // Users made at 4096 and 8192 iterations (2:1); the server now defaults to 20000.
    let users = [("ann", 4096), ("bob", 4096), ("cid", 8192)];
    let auth = authenticator(&users, 20_000);
    let real: Vec<Observed> = (0..LOGINS).map(|n| login(&auth, users[n % 3].0, n)).collect();
    let unknown: Vec<Observed> = (0..LOGINS).map(|n| login(&auth, &format!("ghost{n}"), n)).collect();

    let (hr, hu) = (histogram(&real), histogram(&unknown));
    assert_eq!(hr.keys().collect::<Vec<_>>(), hu.keys().collect::<Vec<_>>(), "real {hr:?} unknown {hu:?}");
    assert!(!hu.contains_key(&20_000), "the configured default never shows: {hu:?}");
    // The same proportions, within sampling noise (2/3 at 4096 for both).
    let share = |h: &BTreeMap<u32, usize>| h[&4096] as f64 / LOGINS as f64;
    assert!((share(&hu) - share(&hr)).abs() < 0.08, "real {hr:?} unknown {hu:?}");
    for (r, u) in real.iter().zip(&unknown) {
        assert_eq!(r.salt_len, u.salt_len);
        assert_eq!(r.error, u.error);
        assert_eq!(r.round_trips, u.round_trips);
    }
    // An unknown name sees the same count every time, as a real user does.
    let again = login(&auth, "ghost7", 99_999);
    assert_eq!(again.iterations, unknown[7].iterations);
    // The server's own time does not separate them either.
    let (mr, mu) =
        (median(real.iter().map(|o| o.server_time).collect()), median(unknown.iter().map(|o| o.server_time).collect()));
    let ratio = mu.as_secs_f64() / mr.as_secs_f64().max(1e-9);
    assert!((0.5..2.0).contains(&ratio), "median server time real {mr:?} unknown {mu:?}");
}

#[test]
fn without_users_unknown_names_get_the_configured_count() {
    let auth = authenticator(&[], 8192);
    assert_eq!(login(&auth, "nobody", 1).iterations, 8192);
}
