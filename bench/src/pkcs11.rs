//! Signing throughput on a PKCS#11 token (the SoftHSM2 token of `cargo xtask services up`), several ways in
//! one run, interleaved round by round:
//!
//! - `raw C_Sign`: one thread per concurrent signer, each with a session of its own, calling `C_Sign`
//!   (`CKM_ECDSA` over a 32-byte digest) and nothing else: the ceiling for any signer on this token;
//! - `ethkms on the token`: `KeyHandle::sign_digest` on `Pkcs11Backend` — the session pool, `r ‖ s`
//!   through ethkms-core, then low-s, verification and the y-parity on every signature — with the calls in
//!   each `CallPlacement`: on Tokio's blocking threads (the library's default), in `block_in_place` (the
//!   service's default) and inline (no hand-over at all);
//! - `ethkms on LocalStack KMS`: the same `KeyHandle::sign_digest` on `AwsKmsBackend`, for comparison.
//!
//! Each round measures every way on the token once, one after another, in an order that turns from round
//! to round; an overhead is the median over the rounds of that round's raw rate over the way's rate, so
//! that a drift in the machine's speed between rounds (other processes, the host of the virtual machine)
//! weighs on both sides of each ratio alike. The rates shown are medians too. LocalStack is measured
//! after every token measurement: a busy LocalStack goes on using the CPUs for a while after its own.
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
use ethkms_pkcs11::{CallPlacement, PinSource, Pkcs11Backend, Pkcs11Config};

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
    let placements = CallPlacement::ALL;
    let mut backends: Vec<Arc<dyn KeyBackend>> = Vec::new();
    for placement in placements {
        backends.push(Arc::new(Pkcs11Backend::connect(config.clone().calls(placement)).await?));
    }
    let info = backends[0].create_key(&CreateKeyRequest::new().description("ethkms-bench")).await?;
    // The token's handles, one per placement, in the order of the table.
    let mut handles = Vec::new();
    for backend in backends {
        handles.push(Arc::new(KeyHandle::open(backend, KeyRef::new(info.key_id.clone())?).await?));
    }
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
    raw.verify_prehash(handles[0].public_key(), &digest(7))?;

    println!("SoftHSM2 token `{token}` ({module}); key {} ({})", info.key_id, handles[0].address());
    println!(
        "ethkms's KeyHandle with the token's calls in each placement, beside raw C_Sign: {} s per measurement, {} rounds, medians",
        options.seconds, options.rounds
    );
    println!();
    // Per concurrency, the rows' cells; the LocalStack figures are added after every token measurement.
    let mut rows = Vec::new();
    for &concurrency in &options.concurrency {
        // Per round: the raw rate, then each handle's rate.
        let mut rounds: Vec<(f64, Vec<f64>)> = Vec::new();
        for round in 0..options.rounds {
            let seconds = options.seconds;
            // Way 0 is raw C_Sign, way k the handle k - 1; the first way measured turns every round.
            let ways = handles.len() + 1;
            let (mut bare, mut rates) = (0.0, vec![0.0; handles.len()]);
            for way in (0..ways).map(|step| (step + round) % ways) {
                if way == 0 {
                    let idle = sessions.split_off(concurrency);
                    let (measured, used) = tokio::task::block_in_place(|| raw_sign_rate(sessions, key, seconds));
                    sessions = used.into_iter().chain(idle).collect();
                    bare = measured;
                } else {
                    rates[way - 1] = handle_rate(&handles[way - 1], concurrency, seconds).await;
                }
            }
            rounds.push((bare, rates));
        }
        let bare = median(rounds.iter().map(|(bare, _)| *bare).collect());
        let rates: Vec<f64> =
            (0..handles.len()).map(|way| median(rounds.iter().map(|(_, rates)| rates[way]).collect())).collect();
        let overheads: Vec<f64> = (0..handles.len())
            .map(|way| median(rounds.iter().map(|(bare, rates)| (bare / rates[way] - 1.0) * 100.0).collect()))
            .collect();
        rows.push((concurrency, bare, rates, overheads));
    }
    // LocalStack last: a busy LocalStack goes on using the CPUs for a while after its measurement.
    let columns: Vec<String> = placements.iter().map(|placement| format!("{placement} sig/s | overhead")).collect();
    println!(
        "| concurrency | raw C_Sign/s | {} | ethkms on LocalStack KMS sig/s | SoftHSM2 ({}) ÷ LocalStack |",
        columns.join(" | "),
        placements[0]
    );
    println!("| ---: | ---: |{} ---: | ---: |", " ---: | ---: |".repeat(placements.len()));
    for (concurrency, bare, rates, overheads) in rows {
        let mut cloud = Vec::new();
        for _ in 0..options.rounds {
            cloud.push(handle_rate(&kms, concurrency, options.seconds).await);
        }
        let cloud = median(cloud);
        let cells: Vec<String> =
            rates.iter().zip(&overheads).map(|(rate, overhead)| format!("{rate:.0} | {overhead:+.1}%")).collect();
        println!("| {concurrency} | {bare:.0} | {} | {cloud:.0} | {:.2}× |", cells.join(" | "), rates[0] / cloud);
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
