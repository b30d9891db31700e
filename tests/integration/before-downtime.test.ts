// What is checked before the downtime, on real containers: an extension the new image does not ship stops prepare
// (method pg_upgrade) and preflight (a dump method) by name, with the old cluster serving on; text indexes in a
// C-library collation stop pg_upgrade across the images' glibc change; an extension the new image has in a newer
// version is kept at its version by pg_upgrade and updated by serve once the new cluster serves; pg_upgrade --check
// of the new image refuses a reg* column at prepare; a library the new server cannot load, which postgres -C
// accepts, is refused by the real start of the new server at prepare; ICU-collated indexes across the images' ICU
// change stop pg_upgrade as C-library ones do across a glibc change.
import { strict as assert } from "node:assert";
import { run } from "../../runner/docker/process";
import { declare } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { connect } from "../fixtures/snapshot";
import { Applier } from "./applier";
import { containerState, endSuite, startSuite, Suite, TEST_IMAGE } from "./docker-env";

const PREFIX = "sptest-pre-";
const PORT = 25440;
const PASSWORD = "before-Pässword-3";
const OLD = `${PREFIX}pg15`;

describe("checked before the downtime: extensions and collations", function () {
    this.timeout(15 * 60 * 1000);
    let suite: Suite | undefined;
    let base: Record<string, string>;
    const applier = new Applier();
    const up = async (cfg: Record<string, string>) => applier.up(await declare({ ...base, ...cfg }, PASSWORD));
    const sql = async (text: string) => {
        const c = await connect({ port: PORT, user: "synapse", password: PASSWORD }, "synapse");
        try {
            return (await c.query(text)).rows;
        } finally {
            await c.end();
        }
    };

    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17]);
        base = suite.base;
        await up({ version: "15" });
        await seedSynapse(OLD, "synapse", { sizeMB: 2, seed: 10 });
    });
    after(() => endSuite(PREFIX, suite));

    it("an extension the new image does not ship: prepare and preflight refuse by name; the old cluster serves on", async () => {
        // An extension of the old image only, as a locally built one would be.
        await run("docker", [
            "exec",
            "-u",
            "root",
            OLD,
            "sh",
            "-c",
            "d=$(pg_config --sharedir)/extension && printf \"default_version = '1.0'\\nrelocatable = true\\n\" > $d/synapse_pg_probe.control && echo 'CREATE FUNCTION synapse_pg_probe() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;' > $d/synapse_pg_probe--1.0.sql",
        ]);
        await sql("CREATE EXTENSION synapse_pg_probe");
        const refusal = `The old cluster uses the extension synapse_pg_probe 1.0 (in synapse), which ${TEST_IMAGE}:17 does not have: the new cluster could not load it; choose an image that ships it (postgres:image), or drop it from the old cluster if unused.`;
        for (const [method, step] of [
            ["pg_upgrade", "prepare"],
            ["directory", "preflight"],
        ]) {
            await assert.rejects(up({ version: "17", upgradeFrom: "15", method }), (err: Error) => {
                assert.ok(err.message.includes(`synapse-pg ${step}: ${refusal}`), err.message);
                return true;
            });
            assert.equal(await containerState(OLD), "running", "the old cluster serves on");
            assert.deepEqual(await sql("SELECT synapse_pg_probe() AS v"), [{ v: 1 }]);
            await up({ version: "15" });
        }
        await sql("DROP EXTENSION synapse_pg_probe");
    });

    it("text indexes in a C-library collation, across the images' glibc change (2.36 to 2.41): prepare refuses pg_upgrade, naming them and method directory", async () => {
        await run("docker", [
            "exec",
            OLD,
            "psql",
            "-U",
            "synapse",
            "-d",
            "postgres",
            "-c",
            "CREATE DATABASE archive_en LOCALE 'en_US.utf8' TEMPLATE template0",
        ]);
        await run("docker", [
            "exec",
            OLD,
            "psql",
            "-U",
            "synapse",
            "-d",
            "archive_en",
            "-c",
            'CREATE TABLE rooms (name text, alias text COLLATE "C"); CREATE INDEX ON rooms (name); CREATE INDEX ON rooms (alias)',
        ]);
        try {
            await assert.rejects(up({ version: "17", upgradeFrom: "15", method: "pg_upgrade" }), (err: Error) => {
                assert.match(
                    err.message,
                    new RegExp(
                        `synapse-pg prepare: Indexes in archive_en \\(1\\) are sorted by C-library collation rules, and the C library changes from "ldd \\(Debian GLIBC 2\\.36[^"]*" in the old image to "ldd \\(Debian GLIBC 2\\.41[^"]*" in ${TEST_IMAGE}:17: pg_upgrade would carry them unchanged and they could return wrong results; set postgres:method to directory \\(its restore builds every index anew\\), or use a new image with the old library\\.`,
                    ),
                );
                return true;
            });
            assert.equal(await containerState(OLD), "running", "the old cluster serves on");
            await up({ version: "15" });
        } finally {
            await run("docker", [
                "exec",
                OLD,
                "psql",
                "-U",
                "synapse",
                "-d",
                "postgres",
                "-c",
                "DROP DATABASE archive_en",
            ]);
        }
    });

    it("text indexes in an ICU collation, across the images' ICU change (72 to 76): prepare refuses pg_upgrade, naming them and method directory", async () => {
        await run("docker", [
            "exec",
            OLD,
            "psql",
            "-U",
            "synapse",
            "-d",
            "postgres",
            "-c",
            "CREATE DATABASE archive_icu LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' TEMPLATE template0",
        ]);
        await run("docker", [
            "exec",
            OLD,
            "psql",
            "-U",
            "synapse",
            "-d",
            "archive_icu",
            "-c",
            'CREATE TABLE rooms (name text, topic text COLLATE "und-x-icu", alias text COLLATE "C"); CREATE INDEX ON rooms (name); CREATE INDEX ON rooms (topic); CREATE INDEX ON rooms (alias)',
        ]);
        try {
            await assert.rejects(up({ version: "17", upgradeFrom: "15", method: "pg_upgrade" }), (err: Error) => {
                assert.ok(
                    err.message.includes(
                        `synapse-pg prepare: Indexes in archive_icu (2) are sorted by ICU collation rules, and ICU changes from 72 in the old image to 76 in ${TEST_IMAGE}:17: pg_upgrade would carry them unchanged and they could return wrong results; set postgres:method to directory (its restore builds every index anew), or use a new image with the old library.`,
                    ),
                    err.message,
                );
                return true;
            });
            assert.equal(await containerState(OLD), "running", "the old cluster serves on");
            await up({ version: "15" });
        } finally {
            await run("docker", [
                "exec",
                OLD,
                "psql",
                "-U",
                "synapse",
                "-d",
                "postgres",
                "-c",
                "DROP DATABASE archive_icu",
            ]);
        }
    });

    it("a reg* column: pg_upgrade --check of the new image refuses at prepare, naming the column; the old cluster serves on, untouched", async () => {
        await sql("CREATE TABLE reg_probe (f regproc); INSERT INTO reg_probe VALUES ('now')");
        try {
            const mark = applier.commandRuns.length;
            await assert.rejects(up({ version: "17", upgradeFrom: "15", method: "pg_upgrade" }), (err: Error) => {
                assert.match(
                    err.message,
                    new RegExp(
                        `synapse-pg prepare: pg_upgrade --check of ${TEST_IMAGE}:17 refuses the old cluster before the downtime, with Synapse serving on: .*Checking for reg\\* data types in user tables .*Your installation contains one of the reg\\* data types in user tables\\. .*A list of the problem columns: public\\.reg_probe\\.f \\(database synapse\\); fix it in the old cluster and run pulumi up again, or set postgres:method to directory\\.`,
                    ),
                );
                return true;
            });
            assert.deepEqual(
                applier.commandRuns
                    .slice(mark)
                    .map((c) => c.name)
                    .filter((n) => /stop-synapse|upgrade-15-to-17-upgrade/.test(n)),
                [],
                "nothing of the downtime ran",
            );
            assert.equal(await containerState(OLD), "running", "the old cluster serves on");
            assert.deepEqual(await sql("SELECT f::text FROM reg_probe"), [{ f: "now" }]);
            const leftovers = await run("docker", [
                "run",
                "--rm",
                "-v",
                `${PREFIX}pgsql17:/d`,
                "--entrypoint",
                "ls",
                `${TEST_IMAGE}:17`,
                "-A",
                "/d",
            ]);
            assert.doesNotMatch(
                leftovers.stdout,
                /pg_upgrade_output\.d/,
                "the check's output folder is gone, so the prepared cluster is reused",
            );
        } finally {
            await sql("DROP TABLE reg_probe");
        }
        await up({ version: "15" });
    });

    it("a library the new server cannot load (postgres -C accepts it): the real start in prepare refuses, before the downtime", async () => {
        const mark = applier.commandRuns.length;
        await assert.rejects(
            up({
                version: "17",
                upgradeFrom: "15",
                method: "pg_upgrade",
                settings: JSON.stringify({ shared_preload_libraries: "synapse_pg_no_such_library" }),
            }),
            (err: Error) => {
                assert.ok(
                    err.message.includes(
                        `synapse-pg prepare: ${TEST_IMAGE}:17 would not start with postgres:settings and the configuration files of "${PREFIX}pg17-staging": could not access file "synapse_pg_no_such_library": No such file or directory; fix the setting or the file and run pulumi up again (the old cluster was not changed).`,
                    ),
                    err.message,
                );
                return true;
            },
        );
        assert.deepEqual(
            applier.commandRuns
                .slice(mark)
                .map((c) => c.name)
                .filter((n) => /stop-synapse|upgrade-15-to-17-upgrade/.test(n)),
            [],
            "nothing of the downtime ran",
        );
        assert.equal(await containerState(OLD), "running", "the old cluster serves on");
        await up({ version: "15" });
    });

    it("an extension the new image has newer: pg_upgrade keeps its version, serve updates it once the new cluster serves", async () => {
        await sql("CREATE EXTENSION pg_trgm VERSION '1.3'");
        const mark = applier.commandRuns.length;
        await up({ version: "17", upgradeFrom: "15", method: "pg_upgrade" });
        const out = (name: string) =>
            applier.commandRuns
                .slice(mark)
                .filter((c) => c.name === name)
                .pop()!.stdout;
        assert.match(
            out("upgrade-15-to-17-prepare"),
            /^prepare: pg_upgrade keeps each extension's version; serve updates these once the new cluster serves: pg_trgm 1\.3 -> 1\.6 in synapse \(ALTER EXTENSION pg_trgm UPDATE\)\.$/m,
        );
        assert.match(
            out("pg17-serve"),
            /^serve: updated the extensions pg_upgrade kept at their old versions: pg_trgm 1\.3 -> 1\.6 in synapse\.$/m,
        );
        assert.deepEqual(
            await sql(
                "SELECT current_setting('server_version_num')::int / 10000 AS v, (SELECT extversion FROM pg_extension WHERE extname = 'pg_trgm') AS pg_trgm",
            ),
            [{ v: 17, pg_trgm: "1.6" }],
        );
        assert.deepEqual(await sql("SELECT similarity('synapse', 'synapses') > 0.5 AS works"), [{ works: true }]);
    });
});
