use std::sync::OnceLock;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;

use super::*;

const POOL: &str = "01HPS9HDSWCQ73RPDTVAK0KK0A";

struct Fixture {
    ca_pem: String,
    /// The pool key as PKCS#8 DER, and a second, unrelated key.
    key_pkcs8: Vec<u8>,
    other_key_pkcs8: Vec<u8>,
    client_cert_pem: String,
    other_cert_pem: String,
    wrong_cn_cert_pem: String,
}

fn rsa_key() -> Vec<u8> {
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("generate RSA key");
    key.as_der().expect("PKCS#8").as_ref().to_vec()
}

fn spki(pkcs8: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8).expect("parse");
    key.public_key().as_der().expect("SPKI").as_ref().to_vec()
}

fn issue(ca: &rcgen::Issuer<'_, rcgen::KeyPair>, cn: &str, pkcs8: &[u8]) -> String {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let public = rcgen::SubjectPublicKeyInfo::from_der(&spki(pkcs8)).expect("spki");
    params.signed_by(&public, ca).expect("sign").pem()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let key_pkcs8 = rsa_key();
        let other_key_pkcs8 = rsa_key();
        Fixture {
            ca_pem: ca_cert.pem(),
            client_cert_pem: issue(&ca, POOL, &key_pkcs8),
            other_cert_pem: issue(&ca, POOL, &other_key_pkcs8),
            wrong_cn_cert_pem: issue(&ca, "01HPS9HDSWCQ73RPDTVAK0KK0B", &key_pkcs8),
            key_pkcs8,
            other_key_pkcs8,
        }
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn token_json() -> serde_json::Value {
    let f = fixture();
    serde_json::json!({
        "version": 1,
        "pool_id": POOL,
        "broker_url": "mqtts://broker.example.com:8883",
        "topic_namespace": "spacelift",
        "ca_cert": f.ca_pem,
        "client_cert": f.client_cert_pem,
    })
}

fn token_with(change: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut json = token_json();
    change(&mut json);
    b64(json.to_string().as_bytes())
}

fn pkcs8_pem() -> String {
    pem_encode("PRIVATE KEY", &fixture().key_pkcs8)
}

fn pkcs1_pem() -> String {
    let key = rsa::PrivateKey::from_pkcs8_der(&fixture().key_pkcs8).expect("rsa parse");
    pem_encode(
        "RSA PRIVATE KEY",
        key.to_pkcs1_der().expect("pkcs1").as_bytes(),
    )
}

fn ec_pem() -> String {
    rcgen::KeyPair::generate().expect("EC key").serialize_pem()
}

fn error_of(token: &str, private_key: &str) -> String {
    match decode_credentials(token.as_bytes(), private_key.as_bytes()) {
        Ok(creds) => panic!("expected an error, got {creds:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn valid_credentials_decode_with_pkcs1_and_pkcs8_keys() {
    let token = token_with(|_| {});
    for key in [pkcs1_pem(), pkcs8_pem()] {
        let creds = decode_credentials(token.as_bytes(), b64(key.as_bytes()).as_bytes())
            .expect("valid credentials");
        assert_eq!(creds.pool_id.to_string(), POOL);
        assert_eq!(
            creds.broker,
            BrokerUrl {
                scheme: BrokerScheme::Tls,
                host: "broker.example.com".to_string(),
                port: 8883
            }
        );
        assert_eq!(creds.topic_namespace, "spacelift");
        assert_eq!(creds.ca_certs.len(), 1);
        assert_eq!(creds.client_chain.len(), 1);
        assert!(creds.client_cert_not_after > 0);
        creds.tls_client_config().expect("rustls config");
        assert!(
            !format!("{creds:?}").contains("BEGIN"),
            "Debug must not leak the key"
        );
    }
}

#[test]
fn private_key_base64_wrapped_at_76_columns_decodes() {
    // `base64` without `-w 0` wraps lines; Go skips the newlines, so must we.
    let encoded = b64(pkcs8_pem().as_bytes());
    let wrapped: Vec<String> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let wrapped = wrapped.join("\n") + "\n";
    decode_credentials(token_with(|_| {}).as_bytes(), wrapped.as_bytes()).expect("wrapped");
}

#[test]
fn bad_base64_private_key_reports_the_byte_offset() {
    let token = token_with(|_| {});
    let good = b64(pkcs8_pem().as_bytes());
    let mut with_space = good.clone();
    with_space.insert(100, ' ');
    let wrapped: String = good
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
        .collect();
    // A `*` on the third line: the offset counts the two newlines before it.
    let mut wrapped_bad = wrapped.clone();
    wrapped_bad.replace_range(160..161, "*");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "a space inside",
            with_space,
            "unable to base64 decode privateKey: illegal base64 data at input byte 100".into(),
        ),
        (
            "newlines count towards the offset",
            wrapped_bad,
            "unable to base64 decode privateKey: illegal base64 data at input byte 160".into(),
        ),
        (
            "the PEM itself instead of its base64",
            pkcs8_pem(),
            "unable to base64 decode privateKey: illegal base64 data at input byte 0".into(),
        ),
        (
            "truncated: the last quantum is reported at its start",
            good[..good.len() - 2].to_string(),
            format!(
                "unable to base64 decode privateKey: illegal base64 data at input byte {}",
                good.len() - 4
            ),
        ),
    ];
    for (name, key, want) in cases {
        assert_eq!(error_of(&token, &key), want, "case: {name}");
    }
}

#[test]
fn bad_tokens_name_the_problem() {
    let key = b64(pkcs8_pem().as_bytes());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "token is not base64",
            "eyJ2ZXJzaW9uIjox!".to_string(),
            "unable to base64 decode token: illegal base64 data at input byte 16",
        ),
        ("token is empty", String::new(), "token is empty"),
        (
            "broken JSON",
            b64(br#"{"a": ]"#),
            "token is not valid JSON at line 1 column 7: expected value",
        ),
        (
            "JSON that ends early",
            b64(br#"{"version": 1, "pool_id": "#),
            "token is not valid JSON at line 1 column 26: EOF while parsing a value",
        ),
        ("JSON array", b64(b"[1]"), "token is not a JSON object"),
        (
            "no version",
            b64(br#"{"pool_id": "x"}"#),
            "token field version: missing",
        ),
        (
            "a future version",
            token_with(|t| t["version"] = 2.into()),
            "token version 2 is not supported (this controller understands version 1); upgrade the controller or issue a version 1 token",
        ),
        (
            "missing field",
            token_with(|t| {
                t.as_object_mut().map(|o| o.remove("broker_url"));
            }),
            "token field broker_url: missing",
        ),
        (
            "wrong type",
            token_with(|t| t["topic_namespace"] = 5.into()),
            "token field topic_namespace: invalid type: integer `5`, expected a string",
        ),
        (
            "pool_id is not a ULID",
            token_with(|t| t["pool_id"] = "my-pool".into()),
            "token field pool_id is not a ULID: \"my-pool\" (invalid length)",
        ),
        (
            "broker_url is https",
            token_with(|t| t["broker_url"] = "https://broker:443".into()),
            "token field broker_url: \"https://broker:443\" does not start with mqtts:// (or mqtt://)",
        ),
        (
            "broker_url has a bad port",
            token_with(|t| t["broker_url"] = "mqtts://broker:99999".into()),
            "token field broker_url: \"mqtts://broker:99999\" has an invalid port \"99999\"",
        ),
        (
            "namespace with a slash",
            token_with(|t| t["topic_namespace"] = "a/b".into()),
            "token field topic_namespace: \"a/b\" must be one non-empty MQTT topic level (no '/', '+', '#', leading '$')",
        ),
        (
            "ca_cert is not PEM",
            token_with(|t| t["ca_cert"] = "hello".into()),
            "token field ca_cert is not a PEM certificate: no -----BEGIN CERTIFICATE----- block found",
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(error_of(&token, &key), want, "case: {name}");
    }
}

#[test]
fn bad_private_keys_name_the_problem() {
    let token = token_with(|_| {});
    let f = fixture();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "an EC key",
            ec_pem(),
            "privateKey is not an RSA private key in PEM form (the PRIVATE KEY block holds a non-RSA key)",
        ),
        (
            "a certificate",
            f.client_cert_pem.clone(),
            "privateKey is not an RSA private key in PEM form (found CERTIFICATE; expected RSA PRIVATE KEY or PRIVATE KEY)",
        ),
        (
            "an encrypted key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
                .to_string(),
            "privateKey is not an RSA private key in PEM form (found ENCRYPTED PRIVATE KEY; decrypt it first, e.g. openssl pkey -in key.pem)",
        ),
        (
            "plain text",
            "hello".to_string(),
            "privateKey is not an RSA private key in PEM form (no -----BEGIN ... PRIVATE KEY----- block found)",
        ),
        (
            "another pool's key",
            pem_encode("PRIVATE KEY", &f.other_key_pkcs8),
            "the client certificate in token does not match privateKey",
        ),
    ];
    for (name, key, want) in cases {
        assert_eq!(error_of(&token, &b64(key.as_bytes())), want, "case: {name}");
    }
}

#[test]
fn certificate_for_another_key_or_pool_is_refused() {
    let f = fixture();
    let key = b64(pkcs8_pem().as_bytes());
    let other = token_with(|t| t["client_cert"] = f.other_cert_pem.clone().into());
    assert_eq!(
        error_of(&other, &key),
        "the client certificate in token does not match privateKey"
    );
    let wrong_cn = token_with(|t| t["client_cert"] = f.wrong_cn_cert_pem.clone().into());
    assert_eq!(
        error_of(&wrong_cn, &key),
        format!(
            "the client certificate in token is for \"01HPS9HDSWCQ73RPDTVAK0KK0B\", not for pool_id {POOL}; the broker would refuse the pool's topics"
        )
    );
}

#[test]
fn token_round_trips_through_encode() {
    let token = Token {
        version: 1,
        pool_id: POOL.to_string(),
        broker_url: "mqtts://127.0.0.1:8883".to_string(),
        topic_namespace: "spacelift".to_string(),
        ca_cert: "ca".to_string(),
        client_cert: "cert".to_string(),
    };
    assert_eq!(decode_token(token.encode().as_bytes()), Ok(token));
}

#[test]
fn broker_urls_parse() {
    let cases = [
        ("mqtts://b:8883", Ok(("b", 8883, BrokerScheme::Tls))),
        ("mqtts://b", Ok(("b", 8883, BrokerScheme::Tls))),
        ("mqtt://b", Ok(("b", 1883, BrokerScheme::Plain))),
        ("mqtts://[::1]:9000", Ok(("::1", 9000, BrokerScheme::Tls))),
        (
            "mqtts://127.0.0.1:1/",
            Ok(("127.0.0.1", 1, BrokerScheme::Tls)),
        ),
        ("mqtts://b:0", Err(())),
        ("mqtts://:8883", Err(())),
        ("mqtts://b/path", Err(())),
        ("tcp://b", Err(())),
    ];
    for (url, want) in cases {
        let got = BrokerUrl::parse(url);
        match want {
            Ok((host, port, scheme)) => {
                let got = got.expect(url);
                assert_eq!(
                    (got.host.as_str(), got.port, got.scheme),
                    (host, port, scheme)
                );
                assert_eq!(
                    BrokerUrl::parse(&got.to_string()),
                    Ok(got),
                    "{url} round trip"
                );
            }
            Err(()) => assert!(got.is_err(), "{url} should be refused"),
        }
    }
}
