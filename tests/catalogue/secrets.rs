//! Secrets: the pool's `token` and `privateKey` as users get them wrong. Every case is a pool
//! of its own whose Secret is bad; each must be named on that pool (the seed's
//! `WorkerPoolCannotRegister` event and the `Registered` condition) while the bystander pool
//! runs.

use std::collections::BTreeMap;
use std::process::Command;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::harness::{Catalogue, Seen, verdict};
use crate::stack::pool_yaml;

/// A pool's real token and key values, as `workerpool-backend pool create` issued them.
#[derive(Clone)]
pub struct Issued {
    pub pool_id: String,
    pub token: Vec<u8>,
    pub private_key: Vec<u8>,
}

impl Issued {
    pub async fn read(cat: &Catalogue, pool: &str) -> anyhow::Result<Self> {
        let pool_id = cat.stack.create_credentials(pool, pool)?;
        let secret = cat.stack.ns.api::<Secret>().get(pool).await?;
        let data = secret.data.unwrap_or_default();
        Ok(Self {
            pool_id,
            token: data.get("token").map(|v| v.0.clone()).unwrap_or_default(),
            private_key: data
                .get("privateKey")
                .map(|v| v.0.clone())
                .unwrap_or_default(),
        })
    }

    /// The token's JSON document.
    pub fn document(&self) -> Value {
        let json = b64_decode(&self.token);
        serde_json::from_slice(&json).unwrap_or_default()
    }

    /// The private key's PEM.
    pub fn pem(&self) -> Vec<u8> {
        b64_decode(&self.private_key)
    }
}

fn b64(bytes: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into_bytes()
}

fn b64_decode(bytes: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(bytes)
        .unwrap_or_default()
}

/// The token with one field of its document changed (`None` removes it).
fn token_with(issued: &Issued, field: &str, value: Option<Value>) -> Vec<u8> {
    let mut document = issued.document();
    if let Some(object) = document.as_object_mut() {
        match value {
            Some(value) => object.insert(field.to_string(), value),
            None => object.remove(field),
        };
    }
    b64(&serde_json::to_vec(&document).unwrap_or_default())
}

/// An RSA key of `bits`, as `openssl genrsa` writes it.
fn openssl_rsa(bits: u32) -> Vec<u8> {
    Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
        .arg(format!("rsa_keygen_bits:{bits}"))
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default()
}

/// What the Secret holds: `None` leaves the key out.
struct SecretCase {
    name: &'static str,
    token: Option<Vec<u8>>,
    private_key: Option<Vec<u8>>,
    /// What follows "cannot retrieve workerpool token: " on the event and the condition.
    problem: String,
}

fn cases(a: &Issued, b: &Issued) -> Vec<SecretCase> {
    let ok_token = || Some(a.token.clone());
    let ok_key = || Some(a.private_key.clone());
    let case = |name, token, private_key, problem: &str| SecretCase {
        name,
        token,
        private_key,
        problem: problem.to_string(),
    };
    let mut bad_at_100 = a.private_key.clone();
    bad_at_100[100] = b'*';
    let mut wrapped = a.private_key.clone();
    wrapped.splice(64..64, *b"\n");
    wrapped[70] = b'!';
    let der = {
        let pem = String::from_utf8_lossy(&a.pem()).to_string();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        b64_decode(body.as_bytes())
    };
    let ec_key = rcgen::KeyPair::generate()
        .map(|k| k.serialize_pem())
        .unwrap_or_default();
    vec![
        case(
            "privateKey as PEM text, not base64",
            ok_token(),
            Some(a.pem()),
            "unable to base64 decode privateKey: illegal base64 data at input byte 0",
        ),
        case(
            "privateKey with a bad byte",
            ok_token(),
            Some(bad_at_100),
            "unable to base64 decode privateKey: illegal base64 data at input byte 100",
        ),
        case(
            "privateKey wrapped, with a bad byte after the line break",
            ok_token(),
            Some(wrapped),
            "unable to base64 decode privateKey: illegal base64 data at input byte 70",
        ),
        case(
            "token as JSON text, not base64",
            Some(a.document().to_string().into_bytes()),
            ok_key(),
            "unable to base64 decode token: illegal base64 data at input byte 0",
        ),
        case(
            "token empty",
            Some(Vec::new()),
            ok_key(),
            "token is empty",
        ),
        case(
            "token that is not JSON",
            Some(b64(b"pool: abc")),
            ok_key(),
            "token is not valid JSON at line 1 column 1: expected value",
        ),
        case(
            "token a JSON array",
            Some(b64(b"[1, 2]")),
            ok_key(),
            "token is not a JSON object",
        ),
        case(
            "token of version 2",
            Some(token_with(a, "version", Some(json!(2)))),
            ok_key(),
            "token version 2 is not supported (this controller understands version 1); upgrade the controller or issue a version 1 token",
        ),
        case(
            "token without a version",
            Some(token_with(a, "version", None)),
            ok_key(),
            "token field version: missing",
        ),
        case(
            "token without broker_url",
            Some(token_with(a, "broker_url", None)),
            ok_key(),
            "token field broker_url: missing",
        ),
        case(
            "token whose ca_cert is a number",
            Some(token_with(a, "ca_cert", Some(json!(7)))),
            ok_key(),
            "token field ca_cert: invalid type: integer `7`, expected a string",
        ),
        case(
            "token whose pool_id is not a ULID",
            Some(token_with(a, "pool_id", Some(json!("pool-1")))),
            ok_key(),
            "token field pool_id is not a ULID: \"pool-1\" (invalid length)",
        ),
        case(
            "token whose broker_url is https",
            Some(token_with(a, "broker_url", Some(json!("https://broker:8883")))),
            ok_key(),
            "token field broker_url: \"https://broker:8883\" does not start with mqtts:// (or mqtt://)",
        ),
        case(
            "token whose topic_namespace has a slash",
            Some(token_with(a, "topic_namespace", Some(json!("a/b")))),
            ok_key(),
            "token field topic_namespace: \"a/b\" must be one non-empty MQTT topic level (no '/', '+', '#', leading '$')",
        ),
        case(
            "token whose ca_cert is not PEM",
            Some(token_with(a, "ca_cert", Some(json!("MIIB...")))),
            ok_key(),
            "token field ca_cert is not a PEM certificate: no -----BEGIN CERTIFICATE----- block found",
        ),
        case(
            "certificate of one pool, key of another",
            ok_token(),
            Some(b.private_key.clone()),
            "the client certificate in token does not match privateKey",
        ),
        case(
            "certificate for another pool's CN",
            Some(token_with(a, "pool_id", Some(json!(b.pool_id)))),
            ok_key(),
            &format!(
                "the client certificate in token is for {:?}, not for pool_id {}; the broker would refuse the pool's topics",
                a.pool_id, b.pool_id
            ),
        ),
        case(
            "privateKey an EC key",
            ok_token(),
            Some(b64(ec_key.as_bytes())),
            "privateKey is not an RSA private key in PEM form (the PRIVATE KEY block holds a non-RSA key)",
        ),
        case(
            "privateKey encrypted",
            ok_token(),
            Some(b64(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n")),
            "privateKey is not an RSA private key in PEM form (found ENCRYPTED PRIVATE KEY; decrypt it first, e.g. openssl pkey -in key.pem)",
        ),
        case(
            "privateKey DER, not PEM",
            ok_token(),
            Some(b64(&der)),
            "privateKey is not an RSA private key in PEM form (found binary data: was the PEM file base64-encoded twice, or is it DER?)",
        ),
        case(
            "privateKey an RSA key of 1024 bits",
            ok_token(),
            Some(b64(&openssl_rsa(1024))),
            "privateKey is an RSA key that cannot be used: it is smaller than 2048 bits",
        ),
        case(
            "Secret without privateKey",
            ok_token(),
            None,
            "spec.privateKey.secretKeyRef: Secret {ns}/{pool} has no key \"privateKey\"",
        ),
    ]
}

#[tokio::test]
async fn every_bad_secret_is_named_on_its_pool_while_another_pool_runs() -> anyhow::Result<()> {
    let cat = Catalogue::new("cat-secrets", &[]).await?;
    let a = Issued::read(&cat, "issued-a").await?;
    let b = Issued::read(&cat, "issued-b").await?;
    let cases = cases(&a, &b);
    let secrets: Api<Secret> = cat.stack.ns.api();
    let checks = async {
        let mut failures = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let pool = format!("secret-{i}");
            let mut data = BTreeMap::new();
            if let Some(token) = &case.token {
                data.insert("token".to_string(), ByteString(token.clone()));
            }
            if let Some(key) = &case.private_key {
                data.insert("privateKey".to_string(), ByteString(key.clone()));
            }
            let mut secret = Secret::default();
            secret.metadata.name = Some(pool.clone());
            secret.data = Some(data);
            secrets.create(&PostParams::default(), &secret).await?;
            cat.stack.apply(&pool_yaml(&pool, &pool, 1, ""))?;
        }
        // A pool whose Secret does not exist at all.
        cat.stack.apply(&pool_yaml("no-secret", "missing", 1, ""))?;
        let missing = "spec.token.secretKeyRef: Secret {ns}/missing not found: create it with the pool's token and privateKey";
        let all = cases
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name, format!("secret-{i}"), c.problem.as_str()))
            .chain([("no Secret", "no-secret".to_string(), missing)]);
        let mut total = 0;
        for (name, pool, problem) in all {
            total += 1;
            let problem = format!("cannot retrieve workerpool token: {problem}");
            for seen in [
                Seen::PoolEvent(
                    "WorkerPoolCannotRegister",
                    format!("Unable to register worker pool: {problem}"),
                ),
                Seen::PoolCondition("Registered", problem.clone()),
            ] {
                if let Err(err) = cat.check(&pool, "", &seen).await {
                    failures.push(format!("{name}: {err:#}"));
                }
            }
        }
        verdict("Secret", total, failures)
    };
    cat.alongside(checks).await?;
    cat.end().await
}
