//! `KmsSigner` on the in-memory backend: every transaction type, messages and typed data, checked by
//! alloy's own recovery; the refusals that must happen before any KMS request; and the published
//! EIP-155 and EIP-712 examples reproduced to the byte.

use std::sync::Arc;

use alloy_consensus::transaction::SignerRecoverable;
use alloy_consensus::{SignableTransaction, TxEip1559, TxEip2930, TxEip4844, TxEip7702, TxEnvelope, TxLegacy};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_eips::eip2930::{AccessList, AccessListItem};
use alloy_eips::eip7702::Authorization;
use alloy_network::TxSigner;
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256, address, b256, hex, keccak256};
use alloy_signer::Signer;
use alloy_sol_types::{SolStruct, eip712_domain, sol};
use ethkms_backend::{CreateKeyRequest, KeyBackend, KeyRef, MemoryBackend};
use ethkms_eth::{KmsSigner, SignerError};

async fn signer(chain_id: Option<u64>) -> (Arc<MemoryBackend>, KmsSigner) {
    let backend = Arc::new(MemoryBackend::new());
    let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
    let dynamic: Arc<dyn KeyBackend> = Arc::clone(&backend) as Arc<dyn KeyBackend>;
    let signer = KmsSigner::new(dynamic, KeyRef::new(info.key_id).unwrap(), chain_id).await.unwrap();
    (backend, signer)
}

async fn imported(secret: [u8; 32], chain_id: Option<u64>) -> KmsSigner {
    let backend = Arc::new(MemoryBackend::new());
    let info = backend.import_secp256k1_key(&secret, &CreateKeyRequest::new()).unwrap();
    KmsSigner::new(backend, KeyRef::new(info.key_id).unwrap(), chain_id).await.unwrap()
}

/// Signs `transaction`, then decodes its raw EIP-2718 bytes and recovers the sender with alloy.
async fn sign_and_recover<T>(signer: &KmsSigner, mut transaction: T) -> (Vec<u8>, TxEnvelope)
where
    T: SignableTransaction<Signature>,
    TxEnvelope: From<alloy_consensus::Signed<T>>,
{
    let signature = signer.sign_transaction(&mut transaction).await.unwrap();
    let envelope: TxEnvelope = transaction.into_signed(signature).into();
    let raw = envelope.encoded_2718();
    let decoded = TxEnvelope::decode_2718(&mut raw.as_slice()).unwrap();
    assert_eq!(decoded.recover_signer().unwrap(), Signer::address(signer));
    (raw, decoded)
}

#[tokio::test]
async fn every_transaction_type_recovers_to_the_signer() {
    let (backend, signer) = signer(Some(31337)).await;
    let to = address!("0x000000000000000000000000000000000000dEaD");
    let access_list = AccessList(vec![AccessListItem { address: to, storage_keys: vec![B256::ZERO] }]);

    let legacy = TxLegacy {
        chain_id: Some(31337),
        nonce: 0,
        gas_price: 1_000_000_000,
        gas_limit: 21_000,
        to: TxKind::Call(to),
        value: U256::from(1),
        input: Bytes::new(),
    };
    let (_, envelope) = sign_and_recover(&signer, legacy).await;
    assert!(envelope.is_legacy());
    let eip2930 = TxEip2930 {
        chain_id: 31337,
        nonce: 1,
        gas_price: 1_000_000_000,
        gas_limit: 30_000,
        to: TxKind::Call(to),
        value: U256::ZERO,
        input: Bytes::new(),
        access_list: access_list.clone(),
    };
    assert!(sign_and_recover(&signer, eip2930).await.1.is_eip2930());
    let eip1559 = TxEip1559 {
        chain_id: 31337,
        nonce: 2,
        gas_limit: 21_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(to),
        value: U256::from(2),
        access_list,
        input: Bytes::new(),
    };
    assert!(sign_and_recover(&signer, eip1559).await.1.is_eip1559());
    let eip4844 = TxEip4844 {
        chain_id: 31337,
        nonce: 3,
        gas_limit: 21_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to,
        value: U256::ZERO,
        access_list: AccessList::default(),
        blob_versioned_hashes: vec![b256!("0x0100000000000000000000000000000000000000000000000000000000000001")],
        max_fee_per_blob_gas: 1,
        input: Bytes::new(),
    };
    assert!(sign_and_recover(&signer, eip4844).await.1.is_eip4844());
    let authorization = Authorization { chain_id: U256::from(31337), address: to, nonce: 5 };
    let signed_authorization = signer.sign_authorization(authorization).await.unwrap();
    assert_eq!(signed_authorization.recover_authority().unwrap(), Signer::address(&signer));
    let eip7702 = TxEip7702 {
        chain_id: 31337,
        nonce: 4,
        gas_limit: 100_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to,
        value: U256::ZERO,
        access_list: AccessList::default(),
        authorization_list: vec![signed_authorization],
        input: Bytes::new(),
    };
    assert!(sign_and_recover(&signer, eip7702).await.1.is_eip7702());
    // One KMS request per signature: five transactions and one authorization.
    assert_eq!(backend.request_counts().sign, 6);
}

#[tokio::test]
async fn chain_id_zero_is_refused_at_construction_and_signs_nothing_if_set_later() {
    let backend = Arc::new(MemoryBackend::new());
    let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
    let dynamic: Arc<dyn KeyBackend> = Arc::clone(&backend) as Arc<dyn KeyBackend>;
    let error = KmsSigner::new(Arc::clone(&dynamic), KeyRef::new(info.key_id.clone()).unwrap(), Some(0)).await;
    assert!(matches!(error, Err(SignerError::ZeroChainId)), "{:?}", error.err());
    // Set later (a hostile node answering eth_chainId 0x0): no authorization, no transaction.
    let mut signer = KmsSigner::new(dynamic, KeyRef::new(info.key_id).unwrap(), Some(1)).await.unwrap();
    signer.set_chain_id(Some(0));
    let any_chain = Authorization { chain_id: U256::ZERO, address: Address::ZERO, nonce: 0 };
    let error = signer.sign_authorization(any_chain.clone()).await.unwrap_err();
    assert!(matches!(error, SignerError::ZeroChainId), "{error:?}");
    let mut transaction = TxEip1559 { chain_id: 0, ..TxEip1559::default() };
    let error = signer.sign_transaction(&mut transaction).await.unwrap_err();
    assert!(error.to_string().contains("chain id 0 names no chain"), "{error}");
    assert_eq!(backend.request_counts().sign, 0, "nothing reached KMS");
    // Only the method that says so signs an authorization for every chain.
    let signed = signer.sign_authorization_for_any_chain(any_chain).await.unwrap();
    assert_eq!(signed.recover_authority().unwrap(), Signer::address(&signer));
}

#[tokio::test]
async fn another_chain_is_refused_before_any_kms_request() {
    let (backend, signer) = signer(Some(1)).await;
    let mut transaction = TxEip1559 { chain_id: 137, ..TxEip1559::default() };
    let error = signer.sign_transaction(&mut transaction).await.unwrap_err();
    assert!(matches!(error, alloy_signer::Error::TransactionChainIdMismatch { signer: 1, tx: 137 }), "{error:?}");
    let mut legacy = TxLegacy { chain_id: Some(5), ..TxLegacy::default() };
    assert!(signer.sign_transaction(&mut legacy).await.is_err());
    let authorization = Authorization { chain_id: U256::from(137), address: Address::ZERO, nonce: 0 };
    let error = signer.sign_authorization(authorization).await.unwrap_err();
    assert!(matches!(error, SignerError::AuthorizationChainMismatch { authorization: 137, .. }), "{error:?}");
    let any_chain = Authorization { chain_id: U256::ZERO, address: Address::ZERO, nonce: 0 };
    let error = signer.sign_authorization(any_chain.clone()).await.unwrap_err();
    assert!(error.to_string().contains("sign_authorization_for_any_chain"), "{error}");
    assert_eq!(backend.request_counts().sign, 0);
    let signed = signer.sign_authorization_for_any_chain(any_chain).await.unwrap();
    assert_eq!(signed.recover_authority().unwrap(), Signer::address(&signer));
}

#[tokio::test]
async fn legacy_transactions_get_eip155_unless_pre_eip155_is_asked_for() {
    let (backend, with_chain) = signer(Some(31337)).await;
    let mut transaction = TxLegacy { chain_id: None, gas_limit: 21_000, ..TxLegacy::default() };
    let signature = with_chain.sign_transaction(&mut transaction).await.unwrap();
    assert_eq!(transaction.chain_id, Some(31337), "EIP-155 applied");
    let envelope: TxEnvelope = transaction.into_signed(signature).into();
    assert_eq!(envelope.recover_signer().unwrap(), Signer::address(&with_chain));

    let (_, without_chain) = signer(None).await;
    let mut transaction = TxLegacy { chain_id: None, gas_limit: 21_000, ..TxLegacy::default() };
    let error = without_chain.sign_transaction(&mut transaction).await.unwrap_err();
    assert!(error.to_string().contains("pre-EIP-155"), "{error}");
    let signature = without_chain.sign_legacy_pre_eip155(&mut transaction).await.unwrap();
    let envelope: TxEnvelope = transaction.clone().into_signed(signature).into();
    assert_eq!(envelope.recover_signer().unwrap(), Signer::address(&without_chain));
    transaction.chain_id = Some(1);
    assert!(matches!(
        without_chain.sign_legacy_pre_eip155(&mut transaction).await,
        Err(SignerError::InvalidArgument(_))
    ));
    assert!(backend.request_counts().sign >= 1);
}

/// EIP-155's example: private key 0x4646…46, nonce 9, 20 gwei, 21000 gas, 1 ether to 0x3535…35 on
/// chain 1. The signing hash, the signature and the raw transaction are the ones EIP-155 gives.
#[tokio::test]
async fn eip155_example_exactly() {
    let signer = imported([0x46; 32], Some(1)).await;
    assert_eq!(Signer::address(&signer), address!("0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F"));
    let mut transaction = TxLegacy {
        chain_id: Some(1),
        nonce: 9,
        gas_price: 20_000_000_000,
        gas_limit: 21_000,
        to: TxKind::Call(address!("0x3535353535353535353535353535353535353535")),
        value: U256::from(1_000_000_000_000_000_000u128),
        input: Bytes::new(),
    };
    assert_eq!(
        transaction.signature_hash(),
        b256!("0xdaf5a779ae972f972197303d7b574746c7ef83eadac0f2791ad23db92e4c8e53")
    );
    let signature = signer.sign_transaction(&mut transaction).await.unwrap();
    assert_eq!(
        signature.r(),
        U256::from_str_radix("18515461264373351373200002665853028612451056578545711640558177340181847433846", 10)
            .unwrap()
    );
    assert_eq!(
        signature.s(),
        U256::from_str_radix("46948507304638947509940763649030358759909902576025900602547168820602576006531", 10)
            .unwrap()
    );
    let raw = TxEnvelope::from(transaction.into_signed(signature)).encoded_2718();
    assert_eq!(
        hex::encode(raw),
        "f86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83"
    );
}

sol! {
    struct Person { string name; address wallet; }
    struct Mail { Person from; Person to; string contents; }
}

const MAIL_JSON: &str = r#"{
  "types": {
    "EIP712Domain": [
      {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
      {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}
    ],
    "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
    "Mail": [{"name": "from", "type": "Person"}, {"name": "to", "type": "Person"}, {"name": "contents", "type": "string"}]
  },
  "primaryType": "Mail",
  "domain": {"name": "Ether Mail", "version": "1", "chainId": 1, "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"},
  "message": {
    "from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
    "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
    "contents": "Hello, Bob!"
  }
}"#;

/// EIP-712's own example: the "Mail" from Cow (private key keccak256("cow")) to Bob. Both the
/// `sol!` path and the `eth_signTypedData_v4` JSON path give the example's hash and signature.
#[tokio::test]
async fn eip712_mail_example_exactly() {
    let signer = imported(keccak256(b"cow").0, Some(1)).await;
    assert_eq!(Signer::address(&signer), address!("0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"));
    let domain = eip712_domain! {
        name: "Ether Mail",
        version: "1",
        chain_id: 1,
        verifying_contract: address!("0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"),
    };
    let mail = Mail {
        from: Person { name: "Cow".into(), wallet: address!("0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826") },
        to: Person { name: "Bob".into(), wallet: address!("0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB") },
        contents: "Hello, Bob!".into(),
    };
    let expected_hash = b256!("0xbe609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2");
    assert_eq!(mail.eip712_signing_hash(&domain), expected_hash);
    assert_eq!(ethkms_eth::typed_data_hash(MAIL_JSON).unwrap(), expected_hash);
    let expected_r = b256!("0x4355c47d63924e8a72e509b65029052eb6c299d53a04e167c5775fd466751c9d");
    let expected_s = b256!("0x07299936d304c153f6443dfa05f40ff007d72911b6f72307f996231605b91562");
    for signature in
        [signer.sign_typed_data(&mail, &domain).await.unwrap(), signer.sign_typed_data_json(MAIL_JSON).await.unwrap()]
    {
        assert_eq!(B256::from(signature.r()), expected_r);
        assert_eq!(B256::from(signature.s()), expected_s);
        assert_eq!(signature.as_bytes()[64], 28, "the example's v");
    }
}

#[tokio::test]
async fn bad_typed_data_is_refused_before_any_kms_request() {
    let (backend, signer) = signer(Some(1)).await;
    let cases = [
        ("{not json", "not eth_signTypedData_v4 JSON"),
        (r#"{"primaryType": "Mail"}"#, "not eth_signTypedData_v4 JSON"),
        (&*MAIL_JSON.replace(r#""name": "Bob""#, r#""name": 7"#), "does not match its types"),
        (&*MAIL_JSON.replace(r#""primaryType": "Mail""#, r#""primaryType": "Letter""#), "does not match its types"),
        (&*MAIL_JSON.replace(r#""wallet": "0xbBbB"#, r#""wallet": "0xZZbB"#), "does not match its types"),
    ];
    for (json, expected) in cases {
        let error = signer.sign_typed_data_json(json).await.unwrap_err();
        assert!(matches!(error, SignerError::TypedData(_)), "{error:?}");
        assert!(error.to_string().contains(expected), "{json}: {error}");
    }
    assert_eq!(backend.request_counts().sign, 0);
}

#[tokio::test]
async fn messages_recover_and_debug_hides_the_backend() {
    let (_, signer) = signer(Some(10)).await;
    for message in [&b"hello"[..], b"", &[0xff; 300]] {
        let signature = signer.sign_message(message).await.unwrap();
        assert_eq!(signature.recover_address_from_msg(message).unwrap(), Signer::address(&signer));
    }
    let text = format!("{signer:?}");
    assert!(text.contains("chain_id: Some(10)") && text.contains(&Signer::address(&signer).to_string()), "{text}");
    assert!(!text.contains("MemoryBackend"), "{text}");
    let wallet = alloy_network::EthereumWallet::from(signer.clone());
    assert_eq!(
        alloy_network::NetworkWallet::<alloy_network::Ethereum>::default_signer_address(&wallet),
        Signer::address(&signer)
    );
}
