// The step runner's command line: one vocabulary across steps, the old flag names still read (a stack's stored
// delete command and people's notes use them), every enum checked, and the help made from the same spec.
import { strict as assert } from "node:assert";
import { stepLine } from "../../../components/command-line";
import { parseFlags } from "../../../runner/cli/flags";
import { flagsOf, main, STEPS } from "../../../runner/cli/main";

const parse = (step: string, line: string) => parseFlags(flagsOf(STEPS[step]), line.split(" ").filter(Boolean));
const refusal = (step: string, line: string) => {
    try {
        parse(step, line);
    } catch (err) {
        return (err as Error).message;
    }
    assert.fail(`${step} ${line} was accepted`);
};

describe("the step runner's flags", () => {
    it("name the old cluster --old and the new one --new in every step that has both", () => {
        for (const [name, step] of Object.entries(STEPS)) {
            const flags = Object.keys(step.flags);
            const olds = Object.entries(step.flags)
                .filter(([, s]) => /^the old cluster's container/.test(s.help))
                .map(([n]) => n);
            assert.ok(
                olds.every((n) => n === "old"),
                `${name} names the old cluster ${olds.join(", ")}`,
            );
            assert.ok(
                !flags.some((f) =>
                    ["from", "to", "staging", "target-major", "target-image", "target-data", "out", "in"].includes(f),
                ),
                `${name}: ${flags.join(", ")}`,
            );
        }
    });

    it("read the names they had before this release as the new ones", () => {
        const f = parse(
            "preflight",
            "--container pg15 --target-major 17 --target-image postgres:17 --target-data pgsql17 --staging pg17-staging",
        );
        assert.deepEqual(
            [f.str("old"), f.int("major"), f.str("image"), f.str("data"), f.opt("new")],
            ["pg15", 17, "postgres:17", "pgsql17", "pg17-staging"],
        );
        assert.equal(parse("remove-standby", "--staging pg17-staging").str("new"), "pg17-staging");
        assert.equal(
            parse("restore", "--container pg17-staging --image i --data d --major 17 --in /b/x").str("new"),
            "pg17-staging",
        );
        assert.equal(
            parse("restore", "--container pg17-staging --image i --data d --major 17 --in /b/x").str("dump"),
            "/b/x",
        );
        assert.deepEqual(
            [parse("copy-config", "--from a --to b").str("old"), parse("copy-config", "--from a --to b").str("new")],
            ["a", "b"],
        );
        assert.equal(parse("dump", "--container pg15 --out /b").str("backup-dir"), "/b");
        assert.equal(parse("rehearse", "--container pg15 --to 17").int("major"), 17);
    });

    it("refuse a flag given twice, under its old and new name", () => {
        assert.equal(refusal("copy-config", "--old a --from b --new c"), "--old is given more than once (as --from).");
    });

    it("refuse an unknown flag, a missing value, a missing flag and a value outside an enum, each in one sentence", () => {
        assert.equal(refusal("verify", "--old a --new b --colour red"), 'Unknown argument "--colour"; see --help.');
        assert.equal(refusal("verify", "--old a --new"), "--new needs a value; see --help.");
        assert.equal(
            refusal("verify", "--old --new b"),
            '--old needs a value (one starting with "-" is given as --old=<value>); see --help.',
        );
        assert.equal(
            refusal("verify", "--old a"),
            "--new is required (the new cluster's (staging) container); see --help.",
        );
        assert.equal(
            refusal("verify", "--old a --new b --json=yes"),
            "--json is a switch and takes no value; see --help.",
        );
        assert.equal(
            refusal("dump", "--old a --backup-dir /b --method tar"),
            '--method must be directory or dumpall, not "tar".',
        );
        assert.equal(
            refusal("rehearse", "--old a --major 17 --method pg_dump"),
            '--method must be directory or dumpall or pg_upgrade, not "pg_dump".',
        );
    });

    it("take a value that starts with a dash as the program writes it", () => {
        const line = stepLine("check-settings", { container: "pg15", settings: "-x" });
        assert.equal(line, "./bin/synapse-pg check-settings --container pg15 --settings=-x");
        assert.equal(parse("check-settings", line.split(" ").slice(2).join(" ")).str("settings"), "-x");
    });

    it("are listed by --help with their old names, from the same spec", async () => {
        const printed: string[] = [];
        const log = console.log;
        console.log = (line: string) => printed.push(line);
        try {
            await main(["preflight", "--help"]);
        } finally {
            console.log = log;
        }
        const help = printed.join("\n");
        assert.match(help, /^ {2}--old <value> +the old cluster's container \(was --container\)$/m);
        assert.match(help, /^ {2}--major <value> +the major to upgrade to \(was --target-major\)$/m);
        assert.match(help, /^ {2}--synapse <value> +Synapse's containers, comma-separated: .* \(optional\)$/m);
        assert.match(help, /^ {2}--json +print the result as JSON \(optional\)$/m);
    });
});
