//! The parser's tests: typos refused, each command's flags parsed.

use super::*;

fn parse(line: &str) -> Result<Xtask> {
    Xtask::parse(line.split_whitespace().map(String::from).collect())
}

fn refused(line: &str) -> String {
    format!("{:#}", parse(line).expect_err(line))
}

#[test]
fn typos_and_stray_arguments_are_refused_with_the_usage() {
    for (line, cmd) in [
        ("codegen --chek", "codegen"),
        ("codegen --check extra", "codegen"),
        ("setup --force", "setup"),
        ("build-assets --arch x86_64 --forse", "build-assets"),
        ("build-assets kernel", "build-assets"),
        ("run --memory 64", "run"),
        ("run uname", "run"),
        ("test --e2e", "test"),
        ("test --arch x86_64", "test"),
        ("conformance ours", "conformance"),
        ("conformance --assets mine", "conformance"),
        ("snapshot-cycles 10 20", "snapshot-cycles"),
        ("snapshot-cycles --park", "snapshot-cycles"),
        ("bench --quik", "bench"),
        ("fuzz --seconds ten", "fuzz"),
        ("fuzz --target", "fuzz"),
    ] {
        let e = refused(line);
        assert!(e.starts_with(&format!("{cmd}: ")), "{line}: {e}");
    }
    assert!(refused("codegen --chek").contains("usage: cargo xtask codegen [--check]"));
    assert!(refused("run uname").contains("after `--`"));
    assert!(refused("frobnicate").contains("unknown command frobnicate"));
    assert!(refused("build-assets --arch riscv").contains("--arch riscv"));
    assert!(refused("run --cpus 0").contains("--cpus 1..=64"));
    assert!(refused("run --arch all").contains("name one arch"));
    assert!(parse("").is_err());
}

#[test]
fn each_command_parses_its_flags() {
    assert_eq!(
        parse("build-assets --arch aarch64 --only kernel --force").unwrap(),
        Xtask::BuildAssets(BuildAssets {
            arches: vec![Arch::Aarch64],
            only: Some(Asset::Kernel),
            force: true,
        })
    );
    assert_eq!(
        parse("build-assets").unwrap(),
        Xtask::BuildAssets(BuildAssets {
            arches: Arch::ALL.to_vec(),
            only: None,
            force: false,
        })
    );
    assert_eq!(
        parse("codegen --check").unwrap(),
        Xtask::Codegen(Codegen { check: true })
    );
    assert_eq!(
        parse("codegen").unwrap(),
        Xtask::Codegen(Codegen { check: false })
    );
    assert_eq!(parse("setup").unwrap(), Xtask::Setup);
    assert_eq!(
        parse("run --arch arm64 --rootfs /r --mem 64 --cpus 2 --tty --sm-vsock -- ls --help -l")
            .unwrap(),
        Xtask::Run(Run {
            arch: Some(Arch::Aarch64),
            rootfs: Some("/r".into()),
            mem_mib: Some(64),
            cpus: Some(2),
            tty: true,
            sm_vsock: true,
            argv: vec!["ls".into(), "--help".into(), "-l".into()],
        })
    );
    assert_eq!(
        parse("test").unwrap(),
        Xtask::Test(Test {
            e2e_only: false,
            arches: Arch::ALL.to_vec(),
        })
    );
    assert_eq!(
        parse("test --e2e-only --arch x86_64").unwrap(),
        Xtask::Test(Test {
            e2e_only: true,
            arches: vec![Arch::X86_64],
        })
    );
    assert_eq!(
        parse("conformance").unwrap(),
        Xtask::Conformance(Conformance {
            assets: vec![Which::Ours, Which::Upstream],
        })
    );
    assert_eq!(
        parse("conformance --assets ours-own-init").unwrap(),
        Xtask::Conformance(Conformance {
            assets: vec![Which::OursOwnInit],
        })
    );
    assert_eq!(
        parse("snapshot-cycles 10 --no-park").unwrap(),
        Xtask::SnapshotCycles(SnapshotCycles { n: 10, park: false })
    );
    assert_eq!(
        parse("snapshot-cycles").unwrap(),
        Xtask::SnapshotCycles(SnapshotCycles { n: 100, park: true })
    );
    assert_eq!(
        parse("bench --arch x86_64 --quick --update-readme").unwrap(),
        Xtask::Bench(Bench {
            arches: vec![Arch::X86_64],
            quick: true,
            update_readme: true,
            only: vec![],
            candidate_kernel: None,
        })
    );
    assert_eq!(
        parse("bench --only tsi --only exec").unwrap(),
        Xtask::Bench(Bench {
            arches: Arch::ALL.to_vec(),
            quick: false,
            update_readme: false,
            only: vec![BenchPart::Tsi, BenchPart::Exec],
            candidate_kernel: None,
        })
    );
    assert!(refused("build-assets --only kernal").contains("--only kernal: no such asset"));
    assert!(refused("bench --candidate-kernel k").contains("needs one --arch"));
    let e = parse("bench --only tls").unwrap_err().to_string();
    assert!(e.contains("--only tls: no such part"), "{e}");
    let e = parse("bench --only tsi --update-readme")
        .unwrap_err()
        .to_string();
    assert!(e.contains("--update-readme needs every part"), "{e}");
    assert_eq!(
        parse("fuzz --target a --target b --seconds 5").unwrap(),
        Xtask::Fuzz(Fuzz {
            targets: vec!["a".into(), "b".into()],
            seconds: 5,
        })
    );
    for help in [
        "help",
        "--help",
        "-h",
        "codegen --help",
        "run --tty -h",
        "setup -h",
    ] {
        assert_eq!(parse(help).unwrap(), Xtask::Help, "{help}");
    }
}

#[test]
fn every_command_has_a_usage_line() {
    let names = USAGE.lines().next().unwrap();
    let names = &names[names.find('<').unwrap() + 1..names.find('>').unwrap()];
    for cmd in names.split('|') {
        assert!(
            usage_of(cmd).starts_with(&format!("usage: cargo xtask {cmd}")),
            "{cmd}"
        );
    }
}
