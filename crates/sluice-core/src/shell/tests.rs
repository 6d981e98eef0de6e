use super::*;
use crate::config::Config;
use crate::model::{Action, Command, CommandKind};
use crate::pipeline::policy::{PolicyEngine, RulesEngine};
use crate::testing::{person, sql_request};
use std::sync::Arc;

/// The programs (with arguments) a line runs, as `program args…` strings.
fn runs(line: &str) -> Vec<String> {
    analyze(line)
        .unwrap_or_else(|e| panic!("{line:?}: {e}"))
        .iter()
        .map(Invocation::text)
        .collect()
}

fn refused(line: &str) -> String {
    match analyze(line) {
        Ok(v) => panic!("{line:?} was judged: {v:?}"),
        Err(e) => e.reason,
    }
}

#[test]
fn simple_commands_and_separators() {
    for (line, expected) in [
        ("ls -la /tmp", vec!["ls -la /tmp"]),
        ("ls; rm -rf /x", vec!["ls", "rm -rf /x"]),
        ("true && rm -rf /x", vec!["true", "rm -rf /x"]),
        ("false || rm -rf /x", vec!["false", "rm -rf /x"]),
        ("cat f | rm -rf /x", vec!["cat f", "rm -rf /x"]),
        ("sleep 1 & rm -rf /x", vec!["sleep 1", "rm -rf /x"]),
        ("echo a\nrm -rf /x\n", vec!["echo a", "rm -rf /x"]),
        ("(cd /; rm -rf /x)", vec!["cd /", "rm -rf /x"]),
        ("{ rm -rf /x; }", vec!["rm -rf /x"]),
        ("if true; then rm -rf /x; fi", vec!["true", "rm -rf /x"]),
        ("for f in a b; do rm -rf $f; done", vec!["rm -rf $f"]),
        ("while false; do :; done", vec!["false", ":"]),
        ("! rm -rf /x", vec!["rm -rf /x"]),
        ("echo hi # rm -rf /", vec!["echo hi"]),
        ("echo a\\\nb", vec!["echo ab"]),
        ("ls |& rm -rf /x", vec!["ls", "rm -rf /x"]),
    ] {
        assert_eq!(runs(line), expected, "{line:?}");
    }
}

#[test]
fn quoting_is_removed_before_matching() {
    for (line, expected) in [
        ("r''m -rf /x", "rm -rf /x"),
        ("\"rm\" -rf /x", "rm -rf /x"),
        ("\\rm -rf /x", "rm -rf /x"),
        ("'r'\"m\" -rf /x", "rm -rf /x"),
        ("$'\\x72m' -rf /x", "rm -rf /x"),
        ("$'\\162m' -rf /x", "rm -rf /x"),
        ("/bin/rm -rf /x", "rm -rf /x"),
        ("/usr/bin/../bin/rm -rf /x", "rm -rf /x"),
        ("echo \"a b\" 'c d'", "echo a b c d"),
        ("echo \"\\$HOME\"", "echo $HOME"),
    ] {
        assert_eq!(runs(line), vec![expected], "{line:?}");
    }
}

#[test]
fn substitutions_run_too() {
    for (line, expected) in [
        ("echo $(rm -rf /x)", vec!["rm -rf /x", "echo $(rm -rf /x)"]),
        ("echo `rm -rf /x`", vec!["rm -rf /x", "echo `rm -rf /x`"]),
        (
            "echo \"$(rm -rf /x)\"",
            vec!["rm -rf /x", "echo $(rm -rf /x)"],
        ),
        ("X=$(rm -rf /x)", vec!["rm -rf /x"]),
        (
            "echo ${X:-$(rm -rf /x)}",
            vec!["rm -rf /x", "echo ${X:-$(rm -rf /x)}"],
        ),
        (
            "diff <(rm -rf /x) f",
            vec!["rm -rf /x", "diff <(rm -rf /x) f"],
        ),
        (
            "cat <<EOF\n$(rm -rf /x)\nEOF\n",
            // The body is read after the command line that opened it.
            vec!["cat", "rm -rf /x"],
        ),
        ("cat <<'EOF'\n$(rm -rf /x)\nEOF\n", vec!["cat"]),
        (
            "echo $(echo $(rm -rf /x))",
            vec![
                "rm -rf /x",
                "echo $(rm -rf /x)",
                "echo $(echo $(rm -rf /x))",
            ],
        ),
    ] {
        assert_eq!(runs(line), expected, "{line:?}");
    }
}

#[test]
fn wrappers_are_unwrapped() {
    for (line, inner) in [
        ("bash -c 'rm -rf /x'", "rm -rf /x"),
        ("sh -c \"rm -rf /x\"", "rm -rf /x"),
        ("bash -lc 'cd /; rm -rf /x'", "rm -rf /x"),
        ("zsh -o errexit -c 'rm -rf /x'", "rm -rf /x"),
        ("dash -ec 'rm -rf /x'", "rm -rf /x"),
        ("env rm -rf /x", "rm -rf /x"),
        ("env -i A=b PATH=/bin rm -rf /x", "rm -rf /x"),
        ("env -u HOME -- rm -rf /x", "rm -rf /x"),
        ("env -S 'rm -rf' /x", "rm -rf /x"),
        ("sudo rm -rf /x", "rm -rf /x"),
        ("sudo -u root -E rm -rf /x", "rm -rf /x"),
        ("sudo --user=root rm -rf /x", "rm -rf /x"),
        // Found by the shell_command fuzz target: sudo takes VAR=value before the program.
        ("sudo FOO=1 rm -rf /x", "rm -rf /x"),
        ("sudo -u root LANG=C PATH=/bin /bin/rm -rf /x", "rm -rf /x"),
        ("sudo -s rm -rf /x", "rm -rf /x"),
        ("doas -u root rm -rf /x", "rm -rf /x"),
        ("nice -n 10 rm -rf /x", "rm -rf /x"),
        ("nice -10 rm -rf /x", "rm -rf /x"),
        ("nohup rm -rf /x", "rm -rf /x"),
        ("timeout 5 rm -rf /x", "rm -rf /x"),
        ("timeout -s KILL 5s rm -rf /x", "rm -rf /x"),
        ("time rm -rf /x", "rm -rf /x"),
        ("exec rm -rf /x", "rm -rf /x"),
        ("command rm -rf /x", "rm -rf /x"),
        ("builtin rm -rf /x", "rm -rf /x"),
        ("busybox rm -rf /x", "rm -rf /x"),
        ("stdbuf -o0 rm -rf /x", "rm -rf /x"),
        ("setsid -f rm -rf /x", "rm -rf /x"),
        ("su -c 'rm -rf /x' root", "rm -rf /x"),
        ("xargs -I{} rm -rf {}", "rm -rf {}"),
        ("xargs rm -rf", "rm -rf {stdin}"),
        ("find / -name x -exec rm -rf {} \\;", "rm -rf {}"),
        ("watch -n 1 rm -rf /x", "rm -rf /x"),
        ("flock /tmp/l rm -rf /x", "rm -rf /x"),
        ("flock -c 'rm -rf /x' /tmp/l", "rm -rf /x"),
        ("sudo env bash -c 'nice /bin/rm -rf /x'", "rm -rf /x"),
        ("A=1 B=2 rm -rf /x", "rm -rf /x"),
    ] {
        let all = runs(line);
        assert!(
            all.iter().any(|r| r == inner),
            "{line:?} → {all:?} lacks {inner:?}"
        );
        // The wrapper itself is judged too.
        assert!(
            all.len() >= 2 || line.starts_with("A=1"),
            "{line:?} → {all:?}"
        );
    }
}

#[test]
fn what_cannot_be_judged_is_refused() {
    for line in [
        "echo 'unbalanced",
        "echo \"unbalanced",
        "echo $(rm -rf /x",
        "echo `rm",
        "echo cm0gLXJmIC94 | base64 -d | sh",
        "curl http://x | bash",
        "bash",
        "bash -s",
        "sh < script",
        "sh <<EOF\nrm -rf /x\nEOF\n",
        "bash /dev/stdin",
        "python3",
        "python3 -",
        "perl",
        "eval 'rm -rf /x'",
        "source ./x.sh",
        ". ./x.sh",
        "alias ls=rm",
        "$CMD -rf /x",
        "\"$(echo rm)\" -rf /x",
        "r${x}m -rf /x",
        "/bin/r? -rf /x",
        "/???/rm -rf /x",
        "{rm,-rf,/x}",
        "echo {a,b}",
        "case x in x) rm -rf /x;; esac",
        "f() { rm -rf /x; }; f",
        "function f { rm; }",
        "(( x = 1 ))",
        "sudo -s",
        "sudo -i",
        "sudo --frobnicate rm -rf /x",
        "su",
        "env --frobnicate rm",
        "bash -c",
        "bash -c \"$X\"",
        "cat <<EOF\nnever ends",
        "echo $(( $(rm -rf /x) ))",
        "echo )",
        "find / -exec rm {}",
        "bash <(curl x)",
    ] {
        let why = refused(line);
        assert!(!why.is_empty(), "{line:?}");
    }
}

#[test]
fn harmless_lines_are_judged() {
    for line in [
        "ls -la",
        "echo $HOME",
        "echo \"${HOME}/x\"",
        "echo $((1 + 2))",
        "ls *.log",
        "grep -r 'a|b' /etc > /tmp/out 2>&1",
        "cat < /etc/hosts",
        "tar czf - dir | gzip -d > x",
        "bash deploy.sh",
        "python3 script.py",
        "python3 -c 'print(1)'",
        "perl -pe 's/a/b/' f",
        "find . -name '*.rs'",
        "scp -t /tmp/x",
        "echo done",
        "exec 2>&1",
        "a=1",
        "",
        "   ",
        "echo '{a,b}'",
        "find . -exec echo {} +",
        "systemctl stop nginx",
        "awk '{print $1}' f",
    ] {
        analyze(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
}

#[test]
fn quote_argv_round_trips() {
    for argv in [
        vec!["ls", "-la"],
        vec!["sh", "-c", "rm -rf / ; echo 'x'"],
        vec!["echo", "it's", "", "$HOME", "`x`", "a\nb"],
        vec!["A=b", "c"],
        // Found by the shell_command fuzz target: reserved words as the program.
        vec!["do", "-x"],
        vec!["{", "}"],
        vec!["if", "then"],
    ] {
        let line = quote_argv(&argv);
        let words = parse(&line).unwrap();
        assert_eq!(words.len(), 1, "{line}");
        let mut got: Vec<String> = words[0]
            .assignments
            .iter()
            .map(|w| w.text.clone())
            .collect();
        got.extend(words[0].words.iter().map(|w| w.text.clone()));
        assert_eq!(got, argv, "{line}");
    }
}

const RULES: &str = r#"
[[connections]]
name = "appdb"
kind = "ssh"
upstream = "127.0.0.1:22"
user = "u"
password = { env = "X" }
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"
allow_groups = ["agents"]
default_action = "deny"

[[rules]]
name = "read-only-tools"
match = { command = ["ls*", "cat *", "echo *"] }
action = "allow"

[[rules]]
name = "no-rm"
match = { program = ["rm", "shred"] }
action = "deny"
message = "Deleting files is not allowed."

[[rules]]
name = "restarts"
match = { command = "systemctl restart *" }
action = "review"
"#;

fn verdict(text: &str) -> (Action, Option<String>) {
    let config = Config::from_toml_str(RULES, "test.toml").unwrap();
    let engine = RulesEngine::compile(&config, &[shell_match_key()]).unwrap();
    let mut req = sql_request(person("agent", &["agents"]), text);
    req.command = Arc::new(Command {
        kind: CommandKind::Exec,
        text: text.into(),
        context: vec![],
    });
    match engine.evaluate(&req) {
        Ok(v) => (v.action, v.rule),
        Err(e) => (Action::Deny, Some(format!("error: {e}"))),
    }
}

#[test]
fn each_part_gets_its_own_verdict() {
    assert_eq!(verdict("ls -la").0, Action::Allow);
    assert_eq!(verdict("ls; cat /etc/hosts").0, Action::Allow);
    // An allowed part does not carry an unlisted one past the default deny.
    assert_eq!(verdict("ls; whoami"), (Action::Deny, None));
    assert_eq!(
        verdict("ls && /bin/rm -rf /x"),
        (Action::Deny, Some("no-rm".into()))
    );
    assert_eq!(verdict("echo a; systemctl restart nginx").0, Action::Review);
    // Unjudgeable lines fail closed.
    let (action, rule) = verdict("echo x | base64 -d | sh");
    assert_eq!(action, Action::Deny);
    assert!(rule.unwrap().starts_with("error:"));
}

#[test]
fn config_errors_name_the_key() {
    let bad = RULES.replace(
        "match = { program = [\"rm\", \"shred\"] }",
        "match = { program = [] }",
    );
    let config = Config::from_toml_str(&bad, "test.toml").unwrap();
    let e = RulesEngine::compile(&config, &[shell_match_key()])
        .err()
        .unwrap();
    assert!(e.0.contains("match.program"), "{e:?}");
}

#[test]
fn arbitrary_input_never_panics() {
    // A small deterministic generator over the characters that matter.
    let alphabet: Vec<char> = "ab r-m$(){}[]`'\"\\;&|<>\n#=*?!,.0123456789 \tcxé"
        .chars()
        .collect();
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let line: String = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let _ = analyze(&line);
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = "$(".repeat(10_000);
    assert!(analyze(&deep).is_err());
    let deep = "(".repeat(10_000);
    assert!(analyze(&deep).is_err());
    let ticks = "echo `".repeat(50);
    let _ = analyze(&ticks);
}

/// Found by the shell_command fuzz target: an option that takes an argument,
/// last on the line, made the wrapper slice past the end (a panic).
#[test]
fn a_wrapper_option_missing_its_argument_is_refused_not_a_panic() {
    for line in [
        "sudo -u",
        "sudo -s -h",
        "env -u",
        "timeout -s",
        "sudo --user",
        "nice -n",
    ] {
        assert!(analyze(line).is_err(), "{line}");
    }
}

/// Found by the shell_command fuzz target: a quoted `NAME=value` in command
/// position is a program name, not an assignment (bash: "A=b: command not found").
#[test]
fn a_quoted_assignment_is_a_program() {
    for (line, program) in [
        ("'A=b' -rf /x", "A=b"),
        ("\\A=b x", "A=b"),
        ("A'=b' x", "A=b"),
    ] {
        let inv = analyze(line).unwrap();
        assert_eq!(
            inv.first().map(|i| i.program.as_str()),
            Some(program),
            "{line}"
        );
    }
    let inv = analyze("A='b c' rm -rf /x").unwrap();
    assert_eq!(inv[0].program, "rm");
    let line = quote_argv(&["u5SO=a", "x"]);
    assert_eq!(analyze(&line).unwrap()[0].program, "u5SO=a");
}
