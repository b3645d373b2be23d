//! Signing throughput on a PKCS#11 token (the SoftHSM2 token of `cargo xtask services up`), three ways in
//! one run, interleaved round by round:
//!
//! - `raw C_Sign`: one thread per concurrent signer, each with a session of its own, calling `C_Sign`
//!   (`CKM_ECDSA` over a 32-byte digest) and nothing else: the ceiling for any signer on this token;
//! - `ethkms on the token`: `KeyHandle::sign_digest` on `Pkcs11Backend` — the session pool, Tokio's blocking
//!   threads, `r ‖ s` through ethkms-core, then low-s, verification and the y-parity on every signature —
//!   as configured by default, and with `calls_in_place` (the calls in `block_in_place`, no thread hand-over);
//! - `ethkms on LocalStack KMS`: the same `KeyHandle::sign_digest` on `AwsKmsBackend`, for comparison.
//!
//! The backend's pool has as many sessions as the highest concurrency measured, so that it is not what
//! limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ethkms_backend::{CreateKeyRequest, KeyBackend, KeyHandle, KeyRef};
use ethkms_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config};

use crate::{Options, digest, median, rate};

/// The variable that holds the test token's PIN.
const PIN_VARIABLE: &str = "ETHKMS_TEST_PKCS11_PIN";

fn variable(name: &str) -> Result<String, String> {
    std::env::var(name)
        .map_err(|_| format!("{name} is not set: create the SoftHSM2 token with `cargo xtask services up`"))
}

/// The token's slot in its module, with the process logged in to it.
fn raw_token(module: &str, label: &str) -> Result<(Pkcs11, Slot), Box<dyn std::error::Error>> {
    let pkcs11 = Pkcs11::new(module)?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(error) => return Err(error.into()),
    }
    let slot = pkcs11
        .get_slots_with_token()?
        .into_iter()
        .find(|slot| pkcs11.get_token_info(*slot).is_ok_and(|info| info.label() == label))
        .ok_or(format!("no token labelled {label}"))?;
    Ok((pkcs11, slot))
}

/// A session of its own, logged in (the login is the process's: another session may have made it).
fn session(pkcs11: &Pkcs11, slot: Slot) -> Result<Session, Box<dyn std::error::Error>> {
    let session = pkcs11.open_rw_session(slot)?;
    let pin = AuthPin::new(variable(PIN_VARIABLE)?.into_boxed_str());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(error) => Err(error.into()),
    }
}

/// `C_Sign` from one thread per session (each thread owns its session: they are not shared) for `seconds`:
/// signatures per second, and the sessions back.
fn raw_sign_rate(sessions: Vec<Session>, key: ObjectHandle, seconds: f64) -> (f64, Vec<Session>) {
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let sessions = std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .into_iter()
            .enumerate()
            .map(|(worker, session)| {
                let done = &done;
                scope.spawn(move || {
                    let mut index = (worker as u64) << 40;
                    while Instant::now() < deadline {
                        let signature = session.sign(&Mechanism::Ecdsa, key, &digest(index)).expect("raw C_Sign");
                        assert_eq!(signature.len(), 64);
                        index += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    session
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().expect("a raw C_Sign thread panicked")).collect()
    });
    (done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(), sessions)
}

/// `KeyHandle::sign_digest` from `concurrency` tasks for `seconds`: signatures per second.
async fn handle_rate(handle: &Arc<KeyHandle>, concurrency: usize, seconds: f64) -> f64 {
    let handle = Arc::clone(handle);
    rate(concurrency, seconds, move |index| {
        let handle = Arc::clone(&handle);
        async move {
            handle.sign_digest(&digest(index)).await.expect("ethkms sign");
        }
    })
    .await
}

pub(crate) async fn run(options: &Options, kms: KeyHandle) -> Result<(), Box<dyn std::error::Error>> {
    let (module, token) = (variable("ETHKMS_TEST_PKCS11_MODULE")?, variable("ETHKMS_TEST_PKCS11_TOKEN")?);
    let most = options.concurrency.iter().copied().max().unwrap_or(1);
    let config = Pkcs11Config::new(&module, &token).pin(PinSource::Env(PIN_VARIABLE.into())).max_sessions(most);
    let backend: Arc<dyn KeyBackend> = Arc::new(Pkcs11Backend::connect(config.clone()).await?);
    let in_place: Arc<dyn KeyBackend> = Arc::new(Pkcs11Backend::connect(config.calls_in_place(true)).await?);
    let info = backend.create_key(&CreateKeyRequest::new().description("ethkms-bench")).await?;
    let hsm = Arc::new(KeyHandle::open(Arc::clone(&backend), KeyRef::new(info.key_id.clone())?).await?);
    let hsm_in_place = Arc::new(KeyHandle::open(in_place, KeyRef::new(info.key_id.clone())?).await?);
    let kms = Arc::new(kms);

    let (pkcs11, slot) = raw_token(&module, &token)?;
    let mut sessions: Vec<Session> = (0..most).map(|_| session(&pkcs11, slot)).collect::<Result<_, _>>()?;
    let id = ethkms_bench_key_id(&info.key_id);
    let key = *sessions[0]
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(id)])?
        .first()
        .ok_or("the benchmark key is not on the token")?;
    // The raw loop signs with the same key: check once that its signatures are the key's.
    let fixed = sessions[0].sign(&Mechanism::Ecdsa, key, &digest(7))?;
    let raw = ethkms_core::EcdsaSignature::from_fixed_bytes(&fixed)?;
    raw.verify_prehash(hsm.public_key(), &digest(7))?;

    println!("SoftHSM2 token `{token}` ({module}); key {} ({})", info.key_id, hsm.address());
    println!();
    println!(
        "| concurrency | raw C_Sign/s | ethkms on SoftHSM2 sig/s | ethkms ÷ raw | overhead | ethkms, calls in place, sig/s | in place ÷ raw | overhead | ethkms on LocalStack KMS sig/s | SoftHSM2 ÷ LocalStack |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &concurrency in &options.concurrency {
        let (mut bare, mut ours, mut placed, mut cloud) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..options.rounds {
            let seconds = options.seconds;
            let idle = sessions.split_off(concurrency);
            let (measured, used) = tokio::task::block_in_place(|| raw_sign_rate(sessions, key, seconds));
            sessions = used.into_iter().chain(idle).collect();
            bare.push(measured);
            ours.push(handle_rate(&hsm, concurrency, seconds).await);
            placed.push(handle_rate(&hsm_in_place, concurrency, seconds).await);
            cloud.push(handle_rate(&kms, concurrency, seconds).await);
        }
        let (bare, ours, placed, cloud) = (median(bare), median(ours), median(placed), median(cloud));
        println!(
            "| {concurrency} | {bare:.0} | {ours:.0} | {:.2} | {:+.1}% | {placed:.0} | {:.2} | {:+.1}% | {cloud:.0} | {:.2}× |",
            ours / bare,
            (bare / ours - 1.0) * 100.0,
            placed / bare,
            (bare / placed - 1.0) * 100.0,
            ours / cloud
        );
    }
    Ok(())
}

/// The `CKA_ID` a key id of the backend names (hexadecimal, dashes ignored).
fn ethkms_bench_key_id(key_id: &str) -> Vec<u8> {
    let digits: Vec<u8> = key_id.bytes().filter(|byte| *byte != b'-').collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("zz"), 16).expect("a hexadecimal key id"))
        .collect()
}
