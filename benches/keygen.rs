//! Worker key generation: the CPU-bound part of scaling a pool out.
//! `cargo bench --bench keygen`; results go to docs/benchmarks.md.

use std::time::{Duration, Instant};

use workerpool_operator::controller::keys::{generate_worker_key, generate_worker_key_aws_lc};

fn keys_per_second(label: &str, threads: usize, keys_per_thread: usize, generate: fn()) {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..keys_per_thread {
                    generate();
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let keys = threads * keys_per_thread;
    println!(
        "{label:<34} {keys:>4} keys on {threads} thread(s): {:>6.1} keys/s ({:.0} ms/key/thread)",
        keys as f64 / elapsed.as_secs_f64(),
        per_key(elapsed, keys_per_thread).as_secs_f64() * 1000.0
    );
}

fn per_key(elapsed: Duration, keys_per_thread: usize) -> Duration {
    elapsed / keys_per_thread.max(1) as u32
}

fn main() {
    // `cargo test --all-targets` runs benches once as tests: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("RSA-2048 worker keys, {cores} core(s)");
    let rsa = || {
        generate_worker_key().expect("rsa crate key");
    };
    let aws = || {
        generate_worker_key_aws_lc().expect("aws-lc-rs key");
    };
    keys_per_second("rsa crate", 1, 40, rsa);
    keys_per_second("rsa crate, all cores", cores, 40, rsa);
    keys_per_second("aws-lc-rs", 1, 40, aws);
    keys_per_second("aws-lc-rs, all cores", cores, 40, aws);
}
