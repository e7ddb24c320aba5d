//! Marks the tests that need what this machine may lack, so that `cargo test` reports them as
//! ignored (not as passed) when it is missing: PostgreSQL (`SPENDGATE_TEST_DATABASE_URL`) and
//! Chromium with ChromeDriver. With `CI` set, both always run, and fail if what they need is absent.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rustc-check-cfg=cfg(browser_tests)");
    println!("cargo::rerun-if-env-changed=SPENDGATE_TEST_DATABASE_URL");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-changed=build.rs");
    // Installing Chromium changes the directory.
    println!("cargo::rerun-if-changed=/usr/bin");
    let ci = std::env::var_os("CI").is_some();
    if ci || std::env::var("SPENDGATE_TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
    let browser = ["/usr/bin/chromium", "/usr/bin/chromedriver"].iter().all(|p| std::path::Path::new(p).exists());
    if ci || browser {
        println!("cargo::rustc-cfg=browser_tests");
    }
}
