//! Logins through `Authenticator`: success, wrong password and unknown user
//! alike, throttling across addresses.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::scram::{self, ScramClient, ScramError, ServerFirst};
use ferry_server::auth::admin::new_user;
use ferry_server::auth::{
    AuthError, Authenticator, MemoryUserStore, SqliteUserStore, Throttle, ThrottleConfig, UserStore, hash_new_password,
};

const ITERATIONS: u32 = scram::MIN_ITERATIONS;
const SECRET: [u8; 32] = [7; 32];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn authenticator(store: Arc<dyn UserStore>) -> Authenticator {
    store.add(new_user("alice", hash_new_password("pencil", ITERATIONS).unwrap())).unwrap();
    Authenticator::new(store, Throttle::new(ThrottleConfig::default()), SECRET, ITERATIONS)
}

/// Runs one login; returns the server-first message and the outcome.
fn login(
    auth: &Authenticator,
    user: &str,
    password: &str,
    from: IpAddr,
    now: Instant,
) -> (String, Result<String, AuthError>) {
    let client = ScramClient::new(user, password, "clientnonce").unwrap();
    let attempt = match auth.begin(&client.client_first(), from, now) {
        Ok(a) => a,
        Err(e) => return (String::new(), Err(e)),
    };
    let server_first = attempt.server_first().to_owned();
    let fin = client.handle_server_first(&server_first).unwrap();
    let outcome = attempt.finish(fin.client_final(), now).map(|(server_final, user)| {
        fin.verify_server_final(&server_final).unwrap();
        user.name
    });
    (server_first, outcome)
}

#[test]
fn right_password_logs_in_with_either_store() {
    let dir = tempfile::tempdir().unwrap();
    let stores: [Arc<dyn UserStore>; 2] =
        [Arc::new(MemoryUserStore::new()), Arc::new(SqliteUserStore::open(&dir.path().join("users.db")).unwrap())];
    for store in stores {
        let auth = authenticator(store);
        let (_, outcome) = login(&auth, "alice", "pencil", ip("192.0.2.1"), Instant::now());
        assert_eq!(outcome.unwrap(), "alice");
    }
}

#[test]
fn unknown_user_fails_like_a_wrong_password() {
    let auth = authenticator(Arc::new(MemoryUserStore::new()));
    let now = Instant::now();
    let from = ip("192.0.2.1");

    let (known_first, wrong) = login(&auth, "alice", "wrong", from, now);
    let (unknown_first, unknown) = login(&auth, "mallory", "wrong", from, now);
    let (invalid_first, invalid) = login(&auth, "Not A Name!", "wrong", from, now);

    let wrong = wrong.unwrap_err();
    for e in [&unknown, &invalid] {
        let e = e.as_ref().unwrap_err();
        assert!(matches!(e, AuthError::Failed), "{e:?}");
        assert_eq!(e.to_string(), wrong.to_string());
    }
    assert!(matches!(wrong, AuthError::Failed));
    assert_eq!(wrong.to_string(), "authentication failed");

    // Same server-first shape: nonce length, salt length, iteration count.
    let parse = |s: &str| ServerFirst::parse(s).unwrap();
    let (k, u, i) = (parse(&known_first), parse(&unknown_first), parse(&invalid_first));
    for other in [&u, &i] {
        assert_eq!(other.iterations, k.iterations);
        assert_eq!(other.salt.len(), k.salt.len());
        assert_eq!(other.nonce.len(), k.nonce.len());
    }
    // An unknown user's salt is stable, like a real one's.
    let (again, _) = login(&auth, "mallory", "wrong", ip("192.0.2.2"), now);
    assert_eq!(parse(&again).salt, u.salt);
}

#[test]
fn flooding_address_is_banned_but_owner_gets_in_from_elsewhere() {
    let auth = authenticator(Arc::new(MemoryUserStore::new()));
    let start = Instant::now();
    let attacker = ip("203.0.113.66");
    let owner = ip("198.51.100.7");

    // Guess cheaply: cache the salted password per salt, as a load harness would.
    let mut cache: Option<(Vec<u8>, [u8; 32])> = None;
    let mut banned_at = None;
    for i in 0..100u64 {
        let now = start + Duration::from_millis(i);
        let client = ScramClient::new("alice", "guess", "n").unwrap();
        let attempt = match auth.begin(&client.client_first(), attacker, now) {
            Ok(a) => a,
            Err(AuthError::Banned { remaining }) => {
                assert!(remaining <= ThrottleConfig::default().ban_for);
                banned_at.get_or_insert(i);
                continue;
            }
            Err(e) => panic!("{e:?}"),
        };
        let sf = ServerFirst::parse(attempt.server_first()).unwrap();
        let salted = match &cache {
            Some((salt, salted)) if *salt == sf.salt => *salted,
            _ => {
                let s = scram::salted_password("guess", &sf.salt, sf.iterations);
                cache = Some((sf.salt.clone(), s));
                s
            }
        };
        let fin = client.handle_server_first_with(attempt.server_first(), &salted).unwrap();
        assert!(matches!(attempt.finish(fin.client_final(), now), Err(AuthError::Failed)));
    }
    assert_eq!(banned_at, Some(u64::from(ThrottleConfig::default().ban_after)));

    // The owner, from another address, is let in after at most a short delay.
    let now = start + Duration::from_secs(1);
    let client = ScramClient::new("alice", "pencil", "n").unwrap();
    let attempt = auth.begin(&client.client_first(), owner, now).unwrap();
    assert!(attempt.delay() <= Duration::from_secs(2), "{:?}", attempt.delay());
    let fin = client.handle_server_first(attempt.server_first()).unwrap();
    let (server_final, user) = attempt.finish(fin.client_final(), now).unwrap();
    fin.verify_server_final(&server_final).unwrap();
    assert_eq!(user.name, "alice");

    // After that success the user's counter is clear; the attacker stays banned.
    let client = ScramClient::new("alice", "pencil", "n").unwrap();
    let attempt = auth.begin(&client.client_first(), owner, now).unwrap();
    assert_eq!(attempt.delay(), Duration::ZERO);
    assert!(matches!(auth.begin(&client.client_first(), attacker, now), Err(AuthError::Banned { .. })));
}

#[test]
fn protocol_errors_are_typed() {
    let auth = authenticator(Arc::new(MemoryUserStore::new()));
    let now = Instant::now();
    let from = ip("192.0.2.1");
    assert!(matches!(auth.begin("y,,n=alice,r=abc", from, now), Err(AuthError::Protocol(ScramError::ChannelBinding))));
    assert!(matches!(auth.begin("garbage", from, now), Err(AuthError::Protocol(ScramError::Malformed(_)))));
    // A known and an unknown user give the same error for a bad client-final.
    for user in ["alice", "nobody"] {
        let attempt = auth.begin(&format!("n,,n={user},r=abc"), from, now).unwrap();
        assert!(matches!(
            attempt.finish("c=biws,r=wrong,p=AAAA", now),
            Err(AuthError::Protocol(ScramError::Malformed(_)))
        ));
    }
}
