// The declared graph for each stack config of the lifecycle, evaluated under Pulumi's mocks.
import { strict as assert } from "node:assert";
import { finishedStep } from "../../../components/upgrade";
import { declare, Declared, isSecret, unwrapSecrets } from "../../fixtures/pulumi-graph";
import { runShell } from "../../integration/applier";

const BACKUPS = "/srv/backups";
const DEPLOY_15 = { version: "15" };
const UPGRADE_17 = { version: "17", upgradeFrom: "15", backupDir: BACKUPS, method: "directory" };
const RUNNER = "./bin/synapse-pg";

function short(urns: string[]): string[] {
    return urns.map((u) => u.split("::").pop()!).sort();
}

function plain(d: Declared, name: string): Record<string, any> {
    return unwrapSecrets(d.byName(name).inputs);
}

/** A container's inputs without those the Docker provider updates in place (mustRun, start): what a replacement is decided on. */
function replacing(inputs: Record<string, unknown>): Record<string, unknown> {
    const { mustRun: _mustRun, start: _start, ...rest } = inputs;
    return rest;
}
describe("first deploy of 15", () => {
    let d: Declared;
    before(async () => (d = await declare(DEPLOY_15)));

    it("declares one cluster: its volume, its container, the check before it is replaced and its serve step, nothing else", () => {
        assert.deepEqual(d.names(), ["pg15", "pg15-before-replace", "pg15-container", "pg15-data", "pg15-serve"]);
        assert.equal(d.byName("pg15").type, "synapse-postgres:index:Cluster");
        for (const child of ["pg15-before-replace", "pg15-container", "pg15-data", "pg15-serve"]) {
            assert.equal(d.byName(child).parent, d.byName("pg15").urn, `${child} is parented to its cluster`);
        }
    });

    it("keeps the synapse-pgsql15 volume when the cluster leaves the stack (retainOnDelete)", () => {
        const v = d.byName("pg15-data");
        assert.equal(v.inputs.name, "synapse-pgsql15");
        assert.equal(v.retainOnDelete, true);
    });

    it("runs postgres:15-alpine named synapse-pg15 on its volume at /var/lib/postgresql/data", () => {
        const c = plain(d, "pg15-container");
        assert.equal(c.name, "synapse-pg15");
        assert.equal(c.image, "postgres:15-alpine");
        assert.deepEqual(c.volumes, [{ volumeName: "synapse-pgsql15", containerPath: "/var/lib/postgresql/data" }]);
        assert.ok(c.envs.includes("PGDATA=/var/lib/postgresql/data"));
        assert.ok(c.envs.includes("POSTGRES_USER=synapse"));
        assert.ok(c.envs.includes("POSTGRES_DB=synapse"));
        assert.ok(c.envs.includes("POSTGRES_INITDB_ARGS=--encoding=UTF8 --locale=C"));
    });

    it("puts the container on the synapse network under the alias db, with nothing published", () => {
        const c = plain(d, "pg15-container");
        assert.deepEqual(c.networksAdvanced, [{ name: "synapse", aliases: ["db"] }]);
        assert.deepEqual(c.ports, []);
    });

    it("passes the password only inside the secret env of the container, and of before-replace, which compares it", () => {
        const c = d.byName("pg15-container");
        assert.ok(isSecret(c.inputs.envs), "envs is a secret");
        assert.ok(plain(d, "pg15-container").envs.includes("POSTGRES_PASSWORD=synapse-secret"));
        const before = d.byName("pg15-before-replace");
        assert.ok(
            isSecret(before.inputs.environment) || isSecret(before.inputs.environment.SYNAPSE_PG_PASSWORD),
            "its env is a secret",
        );
        assert.ok(isSecret(before.inputs.triggers) || isSecret(before.inputs.triggers[8]), "its triggers are a secret");
        assert.ok(!String(before.inputs.create).includes("synapse-secret"));
        for (const r of d.resources) {
            if (r.name === "pg15-container" || r.name === "pg15-before-replace") continue;
            assert.ok(
                !JSON.stringify(unwrapSecrets(r.inputs)).includes("synapse-secret"),
                `${r.name} does not carry the password`,
            );
        }
    });

    it("stops PostgreSQL cleanly, is checked by pg_isready over TCP, and restarts unless stopped", () => {
        const c = plain(d, "pg15-container");
        assert.equal(c.stopSignal, "SIGINT");
        assert.equal(c.destroyGraceSeconds, 120);
        assert.equal(c.restart, "unless-stopped");
        assert.equal(c.removeVolumes, false);
        assert.equal(
            c.wait,
            false,
            "serve waits for the server, not the provider's first health check an interval later",
        );
        assert.deepEqual(c.healthcheck.tests, [
            "CMD",
            "pg_isready",
            "-h",
            "127.0.0.1",
            "-U",
            "synapse",
            "-d",
            "synapse",
        ]);
        assert.equal(d.byName("pg15-container").deleteBeforeReplace, true);
    });

    it("declares the serve step for synapse-pg15 after its container, re-run when the container changes", () => {
        const s = d.byName("pg15-serve");
        assert.equal(
            s.inputs.create,
            `${RUNNER} serve --container synapse-pg15 --network synapse --alias db --database synapse`,
        );
        assert.deepEqual(s.inputs.triggers, ["pg15-container-id"]);
        assert.deepEqual(short(s.dependencies), ["pg15-container"]);
    });

    it("outputs the active version, alias and container", () => {
        assert.equal(d.outputs.activeVersion, "15");
        assert.equal(d.outputs.hostAlias, "db");
        assert.equal(d.outputs.backupFile, undefined);
    });
});

describe("upgrade to 17 (version 17, upgradeFrom 15)", () => {
    let before15: Declared;
    let d: Declared;
    before(async () => {
        before15 = await declare(DEPLOY_15);
        d = await declare(UPGRADE_17);
    });

    it("declares both clusters and the six upgrade steps", () => {
        assert.deepEqual(d.names(), [
            "pg15",
            "pg15-container",
            "pg15-data",
            "pg17",
            "pg17-before-replace",
            "pg17-container",
            "pg17-data",
            "pg17-serve",
            "upgrade-15-to-17",
            "upgrade-15-to-17-copy-config",
            "upgrade-15-to-17-cutover",
            "upgrade-15-to-17-dump",
            "upgrade-15-to-17-preflight",
            "upgrade-15-to-17-restore",
            "upgrade-15-to-17-verify",
        ]);
    });

    it("leaves the old container's inputs as when it served but for mustRun and start (updated in place), so entering the upgrade does not replace it", () => {
        assert.deepEqual(
            replacing(d.byName("pg15-container").inputs),
            replacing(before15.byName("pg15-container").inputs),
        );
        assert.deepEqual(d.byName("pg15-data").inputs, before15.byName("pg15-data").inputs);
    });

    it("moves the serve step to 17: 15 has none while the upgrade is declared", () => {
        assert.equal(d.find("pg15-serve"), undefined);
        assert.equal(
            d.byName("pg17-serve").inputs.create,
            `${RUNNER} serve --container synapse-pg17 --network synapse --alias db --database synapse`,
        );
    });

    it("chains the steps: each depends on the one before, preflight on the old container and the new volume", () => {
        const deps = (step: string) => short(d.byName(`upgrade-15-to-17-${step}`).dependencies);
        assert.deepEqual(deps("preflight"), ["pg15-container", "pg17-data"]);
        assert.ok(deps("dump").includes("upgrade-15-to-17-preflight"));
        assert.ok(deps("restore").includes("upgrade-15-to-17-dump"));
        assert.ok(deps("copy-config").includes("upgrade-15-to-17-restore"));
        assert.ok(deps("verify").includes("upgrade-15-to-17-copy-config"));
        assert.ok(deps("cutover").includes("upgrade-15-to-17-verify"));
    });

    it("creates the 17 container, with the alias, only after cutover (so never before verify)", () => {
        const c = d.byName("pg17-container");
        assert.ok(short(c.dependencies).includes("upgrade-15-to-17-cutover"));
        assert.deepEqual(plain(d, "pg17-container").networksAdvanced, [{ name: "synapse", aliases: ["db"] }]);
    });

    it("runs the exact step commands", () => {
        const cmd = (step: string) => d.byName(`upgrade-15-to-17-${step}`).inputs.create;
        assert.equal(
            cmd("preflight"),
            `${RUNNER} preflight --old synapse-pg15 --major 17 --image postgres:17-alpine --data synapse-pgsql17 --backup-dir ${BACKUPS} --login-user synapse --login-database synapse`,
        );
        assert.equal(
            cmd("dump"),
            `${RUNNER} dump --old synapse-pg15 --backup-dir ${BACKUPS} --name upgrade-15-to-17 --method directory --tool-image postgres:17-alpine`,
        );
        assert.equal(
            cmd("restore"),
            `${RUNNER} restore --new synapse-pg17-staging --image postgres:17-alpine --data synapse-pgsql17 --major 17 --dump ${BACKUPS}/upgrade-15-to-17 --login-user synapse --old synapse-pg15`,
        );
        assert.equal(cmd("copy-config"), `${RUNNER} copy-config --old synapse-pg15 --new synapse-pg17-staging`);
        assert.equal(
            cmd("verify"),
            `${RUNNER} verify --old synapse-pg15 --new synapse-pg17-staging --login-user synapse --login-database synapse`,
        );
        assert.equal(
            cmd("cutover"),
            `${RUNNER} cutover --old synapse-pg15 --new synapse-pg17-staging --data synapse-pgsql17 --image postgres:17-alpine --major 17 --database synapse`,
        );
    });

    it("gives the password to preflight, dump, restore and verify only as a secret environment variable", () => {
        for (const step of ["preflight", "dump", "restore", "verify"]) {
            const env = d.byName(`upgrade-15-to-17-${step}`).inputs.environment;
            // The SDK marks the whole environment map secret when a value in it is.
            assert.ok(isSecret(env) || isSecret(env.SYNAPSE_PG_PASSWORD), `${step}'s password is secret`);
            assert.equal(unwrapSecrets(env).SYNAPSE_PG_PASSWORD, "synapse-secret");
        }
        for (const step of ["copy-config", "cutover"]) {
            assert.equal(d.byName(`upgrade-15-to-17-${step}`).inputs.environment, undefined);
        }
        for (const r of d.resources) {
            assert.ok(
                !String(r.inputs.create ?? "").includes("synapse-secret"),
                `${r.name}'s command line has no password`,
            );
        }
    });

    it("never re-runs a step that succeeded when its inputs change later: its update prints its stored output, and nothing is ignored, so a new attempt runs the inputs declared now", async () => {
        for (const step of ["preflight", "dump", "restore", "copy-config", "verify", "cutover"] as const) {
            const declared = d.byName(`upgrade-15-to-17-${step}`);
            assert.deepEqual(
                declared.ignoreChanges,
                [],
                "ignoreChanges would hold through a new attempt's replacement too",
            );
            assert.equal(declared.inputs.update, finishedStep(step));
        }
        // Run as the provider runs an update: /bin/sh -c, the last output in PULUMI_COMMAND_STDOUT.
        const said = "verify: 12 table(s) compared row for row.\nverify: sequences match.";
        const { stdout, stderr } = await runShell(finishedStep("verify"), {
            PULUMI_COMMAND_STDOUT: said,
            PULUMI_COMMAND_STDERR: "",
        });
        assert.equal(stdout, `${said}\n`, "the step's output stays what it said");
        assert.equal(
            stderr,
            "verify: done in an earlier pulumi up; its new inputs are recorded and nothing runs (bump postgres:attempt to run the upgrade again with them)\n",
        );
    });

    it("keeps both data volumes on delete", () => {
        assert.equal(d.byName("pg15-data").retainOnDelete, true);
        assert.equal(d.byName("pg17-data").retainOnDelete, true);
        assert.equal(plain(d, "pg17-data").name, "synapse-pgsql17");
    });

    it("outputs the backup file and both containers", () => {
        assert.equal(d.outputs.backupFile, `${BACKUPS}/upgrade-15-to-17`);
        assert.equal(d.outputs.activeVersion, "17");
    });
});

describe("minor update 17.5 to 17.6 while the old cluster is kept", () => {
    let at175: Declared;
    let at176: Declared;
    before(async () => {
        at175 = await declare({ ...UPGRADE_17, version: "17.5" });
        at176 = await declare({ ...UPGRADE_17, version: "17.6" });
    });

    it("replaces only the 17 container's image, on the same volume", () => {
        assert.equal(plain(at175, "pg17-container").image, "postgres:17.5-alpine");
        assert.equal(plain(at176, "pg17-container").image, "postgres:17.6-alpine");
        const { image: _a, ...rest175 } = plain(at175, "pg17-container");
        const { image: _b, ...rest176 } = plain(at176, "pg17-container");
        assert.deepEqual(rest176, rest175);
        assert.deepEqual(at176.byName("pg17-data").inputs, at175.byName("pg17-data").inputs);
    });

    it("declares no new step: the same upgrade steps, whose changed image only updates them (their update runs nothing), so no dump runs again", () => {
        assert.deepEqual(at176.names(), at175.names());
        assert.equal(at176.byName("upgrade-15-to-17-dump").inputs.update, finishedStep("dump"));
        assert.deepEqual(
            at176.byName("upgrade-15-to-17-dump").inputs.triggers,
            at175.byName("upgrade-15-to-17-dump").inputs.triggers,
            "not replaced",
        );
        assert.deepEqual(at176.byName("pg15-container").inputs, at175.byName("pg15-container").inputs);
    });
});

describe("revert to 15 (the earlier config again)", () => {
    it("declares exactly what the first deploy declared, so 17's container goes and its volume is kept", async () => {
        const first = await declare(DEPLOY_15);
        const reverted = await declare(DEPLOY_15);
        const upgrading = await declare(UPGRADE_17);
        assert.deepEqual(reverted.names(), first.names());
        for (const name of reverted.names()) assert.deepEqual(reverted.byName(name).inputs, first.byName(name).inputs);
        // The engine deletes what is no longer declared; the 17 volume was declared with retainOnDelete.
        assert.equal(upgrading.byName("pg17-data").retainOnDelete, true);
        assert.equal(reverted.find("pg17-data"), undefined);
        // pg15-serve is declared anew, so pulumi up runs serve for 15 (it was absent during the upgrade).
        assert.equal(upgrading.find("pg15-serve"), undefined);
        assert.ok(reverted.find("pg15-serve"));
    });
});

describe("retire 15 after a good upgrade (version 17, no upgradeFrom)", () => {
    it("keeps 17's container and serve step unchanged and drops 15's container and the steps", async () => {
        const upgrading = await declare(UPGRADE_17);
        const retired = await declare({ version: "17", backupDir: BACKUPS });
        assert.deepEqual(retired.names(), ["pg17", "pg17-before-replace", "pg17-container", "pg17-data", "pg17-serve"]);
        for (const name of retired.names())
            assert.deepEqual(retired.byName(name).inputs, upgrading.byName(name).inputs, name);
        assert.equal(upgrading.byName("pg15-data").retainOnDelete, true, "15's volume stays in Docker");
    });
});

describe("PostgreSQL 18 data layout", () => {
    it("mounts the volume at /var/lib/postgresql with PGDATA at /var/lib/postgresql/18/docker", async () => {
        const d = await declare({ version: "18", upgradeFrom: "17", backupDir: BACKUPS });
        const c = plain(d, "pg18-container");
        assert.deepEqual(c.volumes, [{ volumeName: "synapse-pgsql18", containerPath: "/var/lib/postgresql" }]);
        assert.ok(c.envs.includes("PGDATA=/var/lib/postgresql/18/docker"));
        assert.deepEqual(plain(d, "pg17-container").volumes, [
            { volumeName: "synapse-pgsql17", containerPath: "/var/lib/postgresql/data" },
        ]);
    });
});

describe("host folders (postgres:dataRoot)", () => {
    it("bind-mounts <dataRoot>/pgsql<major> as in the guide and declares no volume", async () => {
        const d = await declare({ ...UPGRADE_17, dataRoot: "/srv/synapse" });
        assert.equal(d.find("pg15-data"), undefined);
        assert.equal(d.find("pg17-data"), undefined);
        assert.deepEqual(plain(d, "pg15-container").volumes, [
            { hostPath: "/srv/synapse/pgsql15", containerPath: "/var/lib/postgresql/data" },
        ]);
        assert.deepEqual(plain(d, "pg17-container").volumes, [
            { hostPath: "/srv/synapse/pgsql17", containerPath: "/var/lib/postgresql/data" },
        ]);
        assert.match(d.byName("upgrade-15-to-17-restore").inputs.create, / --data \/srv\/synapse\/pgsql17 /);
        assert.deepEqual(short(d.byName("upgrade-15-to-17-preflight").dependencies), ["pg15-container"]);
    });
});

describe("Synapse's containers (postgres:synapseContainers) and attempts", () => {
    it("has every step stop Synapse first, and serve start it after the switch", async () => {
        const d = await declare({ ...UPGRADE_17, synapseContainers: '["synapse","synapse-worker1"]' });
        for (const step of ["preflight", "dump", "restore", "copy-config", "verify", "cutover"]) {
            assert.match(
                d.byName(`upgrade-15-to-17-${step}`).inputs.create,
                / --synapse synapse,synapse-worker1$/,
                step,
            );
        }
        assert.equal(
            d.byName("pg17-serve").inputs.create,
            `${RUNNER} serve --container synapse-pg17 --network synapse --alias db --database synapse --synapse synapse,synapse-worker1`,
        );
    });

    it("accepts a comma-separated list too, and leaves the old container untouched by it", async () => {
        const d = await declare({ ...UPGRADE_17, synapseContainers: "synapse, synapse-worker1" });
        assert.match(d.byName("upgrade-15-to-17-dump").inputs.create, / --synapse synapse,synapse-worker1$/);
        const plainUpgrade = await declare(UPGRADE_17);
        assert.deepEqual(d.byName("pg15-container").inputs, plainUpgrade.byName("pg15-container").inputs);
    });

    it("triggers every step on postgres:attempt, so a new attempt runs the chain again from a fresh dump", async () => {
        const first = await declare(UPGRADE_17);
        const second = await declare({ ...UPGRADE_17, attempt: "2" });
        for (const step of ["preflight", "dump", "restore", "copy-config", "verify", "cutover"]) {
            assert.deepEqual(first.byName(`upgrade-15-to-17-${step}`).inputs.triggers, [1]);
            assert.deepEqual(second.byName(`upgrade-15-to-17-${step}`).inputs.triggers, [2]);
        }
    });
});

describe("revert after writes (postgres:revertAcceptLoss)", () => {
    it("passes the accepted number of lost events to the serve step", async () => {
        const d = await declare({ version: "15", revertAcceptLoss: "42" });
        assert.equal(
            d.byName("pg15-serve").inputs.create,
            `${RUNNER} serve --container synapse-pg15 --network synapse --alias db --database synapse --accept-loss 42`,
        );
    });

    it("passes any, for a newer cluster whose events cannot be counted", async () => {
        const d = await declare({ version: "15", revertAcceptLoss: "any" });
        assert.equal(
            d.byName("pg15-serve").inputs.create,
            `${RUNNER} serve --container synapse-pg15 --network synapse --alias db --database synapse --accept-loss any`,
        );
    });
});

describe("rehearsal stack (postgres:rehearse)", () => {
    it("declares only the rehearse command against the live old container, nothing that changes it; by default it rehearses pg_upgrade, the default method", async () => {
        const d = await declare({ version: "17", upgradeFrom: "15", rehearse: "true" });
        assert.deepEqual(d.names(), ["rehearse-15-to-17", "rehearse-15-to-17-run"]);
        const r = d.byName("rehearse-15-to-17-run");
        assert.equal(
            r.inputs.create,
            `${RUNNER} rehearse --old synapse-pg15 --major 17 --image postgres:17-alpine --login-user synapse --login-database synapse --method pg_upgrade --json`,
        );
        assert.deepEqual(r.inputs.triggers, [1]);
        assert.equal(unwrapSecrets(r.inputs.environment).SYNAPSE_PG_PASSWORD, "synapse-secret");
    });
});

describe("a serving container replaced (a minor update, new settings, a new data location)", () => {
    it("stops Synapse first (before-replace, after check-settings), triggered by the image, the settings and the data location; serve starts it again", async () => {
        const d = await declare({
            version: "17.6",
            synapseContainers: "synapse,synapse-worker1",
            settings: '{"work_mem":"16MB"}',
        });
        const before = d.byName("pg17-before-replace");
        assert.equal(
            before.inputs.create,
            `${RUNNER} before-replace --container synapse-pg17 --image postgres:17.6-alpine --command '["postgres","-c","work_mem=16MB"]' --data synapse-pgsql17 --major 17 --port '' --network synapse --alias db --user synapse --database synapse --synapse synapse,synapse-worker1`,
        );
        assert.deepEqual(unwrapSecrets(before.inputs.triggers), [
            "postgres:17.6-alpine",
            '{"work_mem":"16MB"}',
            "synapse-pgsql17",
            "",
            "synapse",
            "db",
            "synapse",
            "synapse",
            "synapse-secret",
        ]);
        assert.deepEqual(short(before.dependencies), ["pg17-check-settings"]);
        assert.ok(short(d.byName("pg17-container").dependencies).includes("pg17-before-replace"));
        assert.match(d.byName("pg17-serve").inputs.create, / --synapse synapse,synapse-worker1$/);
    });
    it("checks the data location without Synapse's containers, and is not declared for an upgrade's old cluster", async () => {
        assert.equal(
            (await declare({ version: "17.6", dataRoot: "/srv/matrix" })).byName("pg17-before-replace").inputs.create,
            `${RUNNER} before-replace --container synapse-pg17 --image postgres:17.6-alpine --command '["postgres"]' --data /srv/matrix/pgsql17 --major 17 --port '' --network synapse --alias db --user synapse --database synapse`,
        );
        const d = await declare({ ...UPGRADE_17, synapseContainers: "synapse" });
        assert.equal(d.find("pg15-before-replace"), undefined);
        assert.ok(d.find("pg17-before-replace"));
    });
});

describe("the default method (postgres:method unset)", () => {
    const UNSET = { version: "17", upgradeFrom: "15", backupDir: BACKUPS };
    it("is pg_upgrade for an upgrade not yet under way, after asking the step runner about the new data location and the dump", async () => {
        const asked: string[] = [];
        const d = await declare(UNSET, "pw", {
            methodUnderway: async (line) => (asked.push(line), JSON.stringify({ method: null, why: "none" })),
        });
        assert.deepEqual(asked, [
            `${RUNNER} method-underway --data synapse-pgsql17 --major 17 --image postgres:17-alpine --backup-dir ${BACKUPS} --name upgrade-15-to-17`,
        ]);
        assert.ok(d.find("upgrade-15-to-17-prepare") && d.find("upgrade-15-to-17-upgrade"), d.names().join(", "));
        assert.equal(d.find("upgrade-15-to-17-dump"), undefined);
    });
    it("keeps the method of an upgrade already under way (begun when directory was the default): nothing is re-planned", async () => {
        const d = await declare(UNSET, "pw", {
            methodUnderway: { method: "directory", why: "the new data's marker says directory (state cutover)" },
        });
        assert.match(d.byName("upgrade-15-to-17-dump").inputs.create, / --method directory /);
        assert.equal(d.find("upgrade-15-to-17-prepare"), undefined);
        assert.equal(d.outputs.backupFile, `${BACKUPS}/upgrade-15-to-17`);
    });
    it("is not asked for when postgres:method is set, nor when no upgrade is declared", async () => {
        const never = async (): Promise<string> => {
            throw new Error("the program asked which method is under way");
        };
        await declare({ ...UNSET, method: "directory" }, "pw", { methodUnderway: never });
        await declare({ version: "17" }, "pw", { methodUnderway: never });
    });
});

describe("dump method", () => {
    it("uses the guide's single pg_dumpall script with postgres:method dumpall", async () => {
        const d = await declare({ ...UPGRADE_17, method: "dumpall" });
        assert.match(d.byName("upgrade-15-to-17-dump").inputs.create, / --method dumpall /);
        assert.match(
            d.byName("upgrade-15-to-17-restore").inputs.create,
            / --dump \/srv\/backups\/upgrade-15-to-17\.sql --login-user synapse --old synapse-pg15$/,
        );
        assert.equal(d.outputs.backupFile, `${BACKUPS}/upgrade-15-to-17.sql`);
    });

    it("copies the dump to postgres:backupCopyDir: preflight checks that folder's space, dump copies and checks", async () => {
        const d = await declare({ ...UPGRADE_17, backupCopyDir: "/home/admin/dumps" });
        const copy = " --backup-copy-dir /home/admin/dumps";
        assert.ok(d.byName("upgrade-15-to-17-preflight").inputs.create.includes(` --backup-dir ${BACKUPS}${copy} `));
        assert.ok(d.byName("upgrade-15-to-17-dump").inputs.create.endsWith(`--tool-image postgres:17-alpine${copy}`));
        for (const step of ["restore", "copy-config", "verify", "cutover"])
            assert.ok(!d.byName(`upgrade-15-to-17-${step}`).inputs.create.includes(copy), step);
    });
});

describe("postgres:dropSettings", () => {
    it("lets copy-config leave the named rejected parameters out of the new cluster", async () => {
        const d = await declare({ ...UPGRADE_17, dropSettings: "wal_keep_segments, stats_temp_directory" });
        assert.equal(
            d.byName("upgrade-15-to-17-copy-config").inputs.create,
            `${RUNNER} copy-config --old synapse-pg15 --new synapse-pg17-staging --drop wal_keep_segments,stats_temp_directory`,
        );
    });

    it("gives method pg_upgrade's prepare, which carries the configuration before the downtime, the same settings and consent", async () => {
        const d = await declare({
            ...UPGRADE_17,
            method: "pg_upgrade",
            dropSettings: "wal_keep_segments",
            settings: '{"work_mem":"16MB"}',
        });
        const config = `--settings '{"work_mem":"16MB"}' --drop wal_keep_segments`;
        assert.equal(
            d.byName("upgrade-15-to-17-prepare").inputs.create,
            `${RUNNER} prepare --old synapse-pg15 --new synapse-pg17-staging --image postgres:17-alpine --data synapse-pgsql17 --major 17 ${config}`,
        );
        assert.equal(
            d.byName("upgrade-15-to-17-copy-config").inputs.create,
            `${RUNNER} copy-config --old synapse-pg15 --new synapse-pg17-staging ${config}`,
        );
    });

    it("postgres:dropAccessRules goes to copy-config and prepare as --drop-access-rules, with the rules as named", async () => {
        const d = await declare({
            ...UPGRADE_17,
            method: "pg_upgrade",
            dropAccessRules: "pg_hba.conf:98, pg_ident.conf:3",
        });
        for (const step of ["prepare", "copy-config"]) {
            assert.match(
                d.byName(`upgrade-15-to-17-${step}`).inputs.create,
                / --drop-access-rules pg_hba\.conf:98,pg_ident\.conf:3$/,
                step,
            );
        }
    });
});

describe("method pg_upgrade", () => {
    const PHYSICAL = { version: "17", upgradeFrom: "15", method: "pg_upgrade", synapseContainers: "synapse" };

    it("declares prepare, preflight, upgrade, copy-config, verify and cutover, chained in that order, and needs no backupDir", async () => {
        const d = await declare(PHYSICAL);
        const steps = ["prepare", "preflight", "upgrade", "copy-config", "verify", "cutover"];
        assert.deepEqual(
            d
                .names()
                .filter((n) => n.startsWith("upgrade-15-to-17-"))
                .sort(),
            steps.map((s) => `upgrade-15-to-17-${s}`).sort(),
        );
        assert.deepEqual(short(d.byName("upgrade-15-to-17-prepare").dependencies), ["pg15-container", "pg17-data"]);
        for (let i = 1; i < steps.length; i++) {
            assert.ok(
                short(d.byName(`upgrade-15-to-17-${steps[i]}`).dependencies).includes(
                    `upgrade-15-to-17-${steps[i - 1]}`,
                ),
                steps[i],
            );
        }
        assert.ok(short(d.byName("pg17-container").dependencies).includes("upgrade-15-to-17-cutover"));
        assert.equal(d.outputs.backupFile, undefined);
    });

    it("runs the exact step commands; prepare runs while Synapse serves, every later step stops it first", async () => {
        const d = await declare(PHYSICAL);
        const cmd = (step: string) => d.byName(`upgrade-15-to-17-${step}`).inputs.create;
        const cluster = "--new synapse-pg17-staging --image postgres:17-alpine --data synapse-pgsql17 --major 17";
        assert.equal(cmd("prepare"), `${RUNNER} prepare --old synapse-pg15 ${cluster}`);
        assert.equal(
            cmd("preflight"),
            `${RUNNER} preflight --old synapse-pg15 --major 17 --image postgres:17-alpine --data synapse-pgsql17 --new synapse-pg17-staging --login-user synapse --login-database synapse --synapse synapse`,
        );
        assert.equal(
            cmd("upgrade"),
            `${RUNNER} upgrade --old synapse-pg15 ${cluster} --login-user synapse --synapse synapse`,
        );
        assert.match(cmd("verify"), / --synapse synapse$/);
        for (const step of ["prepare", "upgrade"] as const) {
            const s = d.byName(`upgrade-15-to-17-${step}`);
            assert.ok(
                isSecret(s.inputs.environment) || isSecret(s.inputs.environment.SYNAPSE_PG_PASSWORD),
                `${step} gets the password as a secret`,
            );
            assert.equal(unwrapSecrets(s.inputs.environment).SYNAPSE_PG_PASSWORD, "synapse-secret");
            assert.ok(!s.inputs.create.includes("synapse-secret"));
            assert.equal(s.inputs.update, finishedStep(step));
        }
    });

    it("removes prepare's standby when the upgrade leaves the stack, and before a new attempt's prepare makes another", async () => {
        const d = await declare(PHYSICAL);
        const prepare = d.byName("upgrade-15-to-17-prepare");
        assert.equal(prepare.inputs.delete, `${RUNNER} remove-standby --new synapse-pg17-staging`);
        assert.equal(prepare.deleteBeforeReplace, true);
        for (const step of ["preflight", "upgrade", "copy-config", "verify", "cutover"]) {
            const s = d.byName(`upgrade-15-to-17-${step}`);
            assert.equal(s.inputs.delete, undefined, `${step} has nothing to undo`);
            assert.equal(s.deleteBeforeReplace, false);
        }
    });
});

describe("published port and image options", () => {
    it("publishes 5432 on 127.0.0.1 only", async () => {
        const d = await declare({ version: "15", port: "25432" });
        assert.deepEqual(plain(d, "pg15-container").ports, [{ internal: 5432, external: 25432, ip: "127.0.0.1" }]);
    });

    it("uses postgres:upgradeFromImage for the old cluster, e.g. pinned by digest", async () => {
        const pinned = "postgres@sha256:" + "a".repeat(64);
        const d = await declare({ ...UPGRADE_17, upgradeFromImage: pinned });
        assert.equal(plain(d, "pg15-container").image, pinned);
        assert.equal(plain(d, "pg17-container").image, "postgres:17-alpine");
    });

    it("declares the old container unchanged when upgradeFrom names the minor it ran (17.6 to 18)", async () => {
        const serving = await declare({ version: "17.6" });
        const upgrading = await declare({ version: "18", upgradeFrom: "17.6", backupDir: BACKUPS });
        assert.deepEqual(
            replacing(upgrading.byName("pg17-container").inputs),
            replacing(serving.byName("pg17-container").inputs),
        );
        assert.equal(plain(upgrading, "pg17-container").image, "postgres:17.6-alpine");
    });

    it("names volumes after the container prefix", async () => {
        const d = await declare({ version: "15", containerPrefix: "chat-pg" });
        assert.equal(plain(d, "pg15-data").name, "chat-pgsql15");
        assert.equal(plain(d, "pg15-container").name, "chat-pg15");
    });

    it("fills {major} and {version} in the image template", async () => {
        const d = await declare({ version: "17.6", image: "registry.local/pg:{major}-{version}" });
        assert.equal(plain(d, "pg17-container").image, "registry.local/pg:17-17.6");
    });
});

describe("postgres:settings: tuning as declared config, for the serving cluster only", () => {
    const SETTINGS = JSON.stringify({ shared_buffers: "1GB", work_mem: "16MB", max_connections: 200 });

    it("starts the serving server with -c options, sorted, and sizes /dev/shm after shared_buffers", async () => {
        const d = await declare({ version: "15", settings: SETTINGS });
        const c = plain(d, "pg15-container");
        assert.deepEqual(c.command, [
            "postgres",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=1GB",
            "-c",
            "work_mem=16MB",
        ]);
        assert.equal(c.shmSize, 1024);
    });

    it("keeps Docker's 64 MB /dev/shm as the floor, and declares the image's own command and shm size without settings", async () => {
        assert.equal(
            plain(
                await declare({ version: "15", settings: JSON.stringify({ shared_buffers: "16MB" }) }),
                "pg15-container",
            ).shmSize,
            64,
        );
        // Declared, not left out: the provider keeps a container's value for an absent input, so removing the last
        // setting would otherwise never reach the server.
        const bare = plain(await declare({ version: "15" }), "pg15-container");
        assert.deepEqual(bare.command, ["postgres"]);
        assert.equal(bare.shmSize, 64);
    });

    it("checks the settings with the running server's binary before the container that carries them", async () => {
        const d = await declare({ version: "15", settings: SETTINGS });
        const check = d.byName("pg15-check-settings");
        assert.equal(check.parent, d.byName("pg15").urn);
        assert.equal(
            check.inputs.create,
            `${RUNNER} check-settings --container synapse-pg15 --settings '{"max_connections":"200","shared_buffers":"1GB","work_mem":"16MB"}'`,
        );
        assert.deepEqual(check.inputs.triggers, ['{"max_connections":"200","shared_buffers":"1GB","work_mem":"16MB"}']);
        assert.ok(short(d.byName("pg15-container").dependencies).includes("pg15-check-settings"));
        assert.equal((await declare({ version: "15" })).find("pg15-check-settings"), undefined);
    });

    it("during an upgrade: the new cluster gets them, copy-config checks them, the old container ignores them", async () => {
        const d = await declare({ ...UPGRADE_17, settings: SETTINGS });
        assert.deepEqual(plain(d, "pg17-container").command, [
            "postgres",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=1GB",
            "-c",
            "work_mem=16MB",
        ]);
        assert.equal(
            d.byName("upgrade-15-to-17-copy-config").inputs.create,
            `${RUNNER} copy-config --old synapse-pg15 --new synapse-pg17-staging --settings '{"max_connections":"200","shared_buffers":"1GB","work_mem":"16MB"}'`,
        );
        assert.deepEqual(d.byName("pg15-container").ignoreChanges.sort(), [
            "command",
            "envs",
            "image",
            "labels",
            "name",
            "networksAdvanced",
            "ports",
            "shmSize",
            "volumes",
        ]);
        assert.deepEqual(d.byName("pg17-container").ignoreChanges, []);
        assert.equal(d.find("pg15-check-settings"), undefined);
    });

    it("no cluster is must-run or started by Pulumi: a refresh or a re-creation never starts one beside another; serve starts the serving one", async () => {
        const d = await declare(UPGRADE_17);
        assert.deepEqual([plain(d, "pg15-container").mustRun, plain(d, "pg15-container").start], [false, false]);
        assert.deepEqual([plain(d, "pg17-container").mustRun, plain(d, "pg17-container").start], [false, false]);
        assert.ok(short(d.byName("pg17-serve").dependencies).includes("pg17-container"));
        const serving = await declare({ version: "15" });
        assert.deepEqual(
            [plain(serving, "pg15-container").mustRun, plain(serving, "pg15-container").start],
            [false, false],
        );
    });
});

describe("bad stack config is refused before anything is declared", () => {
    const cases: [string, Record<string, string>, string | null, string][] = [
        [
            "a missing version",
            {},
            "pw",
            "postgres:version is required: the major (17) or major.minor (17.6) that serves Synapse",
        ],
        [
            "a version that is not a number",
            { version: "latest" },
            "pw",
            'postgres:version is "latest" but must be a major like 17 or a major.minor like 17.6',
        ],
        [
            "a version Synapse does not support",
            { version: "13" },
            "pw",
            'postgres:version is "13" but must be 14 or newer: current Synapse refuses older PostgreSQL',
        ],
        [
            "upgradeFrom that is not a version",
            { version: "17", upgradeFrom: "fifteen", backupDir: BACKUPS },
            "pw",
            'postgres:upgradeFrom is "fifteen" but must be the version the old cluster runs, like 15 or 15.8',
        ],
        [
            "upgradeFrom older than this tool handles",
            { version: "17", upgradeFrom: "9", backupDir: BACKUPS },
            "pw",
            'postgres:upgradeFrom is "9" but must be 10 or newer (what this tool can dump and restore)',
        ],
        [
            "upgradeFrom equal to version",
            { version: "17", upgradeFrom: "17", backupDir: BACKUPS },
            "pw",
            'postgres:upgradeFrom is "17" but the same major as postgres:version; a minor change needs no upgradeFrom: remove it',
        ],
        [
            "a downgrade",
            { version: "15", upgradeFrom: "17", backupDir: BACKUPS },
            "pw",
            'postgres:upgradeFrom is "17" but newer than postgres:version 15: a downgrade is not a revert; to go back, restore the earlier config (version 17, no upgradeFrom)',
        ],
        [
            "a dump upgrade without backupDir",
            { version: "17", upgradeFrom: "15", method: "directory" },
            "pw",
            "postgres:backupDir is required while postgres:upgradeFrom is set with method directory: the host folder the dump is written to",
        ],
        [
            "a relative backupDir",
            { version: "17", upgradeFrom: "15", backupDir: "backups" },
            "pw",
            'postgres:backupDir is "backups" but must be an absolute host folder without spaces or colons, like /srv/synapse/backups',
        ],
        [
            "a relative dataRoot",
            { version: "15", dataRoot: "./data" },
            "pw",
            'postgres:dataRoot is "./data" but must be an absolute host folder without spaces or colons, like /srv/synapse',
        ],
        [
            "a port out of range",
            { version: "15", port: "70000" },
            "pw",
            'postgres:port is "70000" but must be a TCP port from 1 to 65535',
        ],
        [
            "a port that is not a number",
            { version: "15", port: "pg" },
            "pw",
            'postgres:port is "pg" but must be a TCP port number',
        ],
        [
            "a user name with capitals",
            { version: "15", user: "Synapse" },
            "pw",
            'postgres:user is "Synapse" but must be a lower-case PostgreSQL role name like synapse',
        ],
        [
            "a network name with a space",
            { version: "15", network: "my net" },
            "pw",
            'postgres:network is "my net" but must be a Docker network name like synapse_default',
        ],
        [
            "an alias with a slash",
            { version: "15", hostAlias: "db/x" },
            "pw",
            'postgres:hostAlias is "db/x" but must be a host name like db',
        ],
        [
            "an image with a space",
            { version: "15", image: "postgres 15" },
            "pw",
            'postgres:image is "postgres 15" but must be an image reference like postgres:{version}-alpine or postgres@sha256:<digest>',
        ],
        [
            "one pinned digest for two majors",
            { ...UPGRADE_17, image: "postgres@sha256:" + "b".repeat(64) },
            "pw",
            "postgres:upgradeFromImage is required when postgres:image pins one digest: that image holds one major only, so name the old cluster's image too",
        ],
        [
            "an unknown dump method",
            { ...UPGRADE_17, method: "pgcopydb" },
            "pw",
            'postgres:method is "pgcopydb" but must be pg_upgrade (copy the data files), directory (parallel dump and restore) or dumpall (the guide\'s single script)',
        ],
        [
            "Synapse containers that are not names",
            { ...UPGRADE_17, synapseContainers: "synapse;rm -rf /" },
            "pw",
            'postgres:synapseContainers is "synapse;rm -rf /" but must be container names, comma-separated or a JSON list, like synapse,synapse-worker1',
        ],
        [
            "an attempt that is not a positive number",
            { ...UPGRADE_17, attempt: "0" },
            "pw",
            'postgres:attempt is "0" but must be a whole number from 1 (bump it to run the upgrade again from a fresh dump)',
        ],
        [
            "a revertAcceptLoss that is not a count",
            { version: "15", revertAcceptLoss: "yes" },
            "pw",
            'postgres:revertAcceptLoss is "yes" but must be the number of events the revert may lose, as the refused revert reported it, like 42, or any when they cannot be counted',
        ],
        [
            "a rehearsal with nothing to rehearse from",
            { version: "17", rehearse: "true" },
            "pw",
            'postgres:rehearse is "true" but needs the cluster to rehearse from: set postgres:upgradeFrom (or postgres:adopt) and postgres:version',
        ],
        [
            "a rehearse flag that is not a boolean",
            { version: "17", upgradeFrom: "15", rehearse: "yes" },
            "pw",
            'postgres:rehearse is "yes" but must be true or false',
        ],
        [
            "a missing password",
            { version: "15" },
            null,
            "postgres:password is required: set it with `pulumi config set --secret postgres:password <password>`",
        ],
        [
            "an unknown key",
            { version: "15", upgradefrom: "14" },
            "pw",
            "postgres:upgradefrom is not a setting of this program (a typo?)",
        ],
        [
            "settings that are not a map",
            { version: "15", settings: "shared_buffers=1GB" },
            "pw",
            "postgres:settings is \"shared_buffers=1GB\" but must be a map of PostgreSQL settings, set one at a time with `pulumi config set --path 'postgres:settings.shared_buffers' 1GB`",
        ],
        [
            "a setting the program owns",
            { version: "15", settings: '{"port":"5433"}' },
            "pw",
            'postgres:settings is "{"port":"5433"}" but has port, which this program sets itself: the container\'s port 5432 is what Synapse, the healthcheck and postgres:port use; remove it',
        ],
        [
            "a setting name that is not one",
            { version: "15", settings: '{"Work Mem":"1MB"}' },
            "pw",
            'postgres:settings is "{"Work Mem":"1MB"}" but has "Work Mem", which is not a PostgreSQL parameter name (lower case, like work_mem)',
        ],
        [
            "dropSettings that are not parameter names",
            { ...UPGRADE_17, dropSettings: "wal_keep_segments;rm" },
            "pw",
            'postgres:dropSettings is "wal_keep_segments;rm" but must be PostgreSQL parameter names, comma-separated, as copy-config named them, like wal_keep_segments,stats_temp_directory',
        ],
        [
            "dropAccessRules that are not <file>:<line>",
            { ...UPGRADE_17, dropAccessRules: "host all all 10.0.0.0/8 md5" },
            "pw",
            'postgres:dropAccessRules is "host all all 10.0.0.0/8 md5" but must be access rules as copy-config named them, <file>:<line> of the old cluster, comma-separated, like pg_hba.conf:98',
        ],
        [
            "a shared_buffers that is not a size",
            { version: "15", settings: '{"shared_buffers":"lots"}' },
            "pw",
            'postgres:settings is "{"shared_buffers":"lots"}" but has shared_buffers = "lots", which must be a size like 512MB or 2GB (the container\'s shared memory follows it)',
        ],
        [
            "a relative backupCopyDir",
            { version: "17", upgradeFrom: "15", method: "directory", backupDir: BACKUPS, backupCopyDir: "copies" },
            "pw",
            'postgres:backupCopyDir is "copies" but must be an absolute folder on the machine that runs pulumi up, without spaces or colons, like /home/admin/synapse-dumps',
        ],
        [
            "a backupCopyDir with method pg_upgrade, which writes no dump",
            { version: "17", upgradeFrom: "15", method: "pg_upgrade", backupCopyDir: "/home/admin/dumps" },
            "pw",
            "postgres:backupCopyDir is set but method pg_upgrade writes no dump to copy: set postgres:method to directory or dumpall, or remove backupCopyDir",
        ],
        [
            "a docker:host that is not the address of a Docker engine",
            { version: "15", "docker:host": "matrix.example.org" },
            "pw",
            'docker:host is "matrix.example.org" but it must be a unix://, ssh:// or tcp:// address of a Docker engine (for example ssh://admin@matrix.example.org)',
        ],
    ];
    for (const [what, config, password, message] of cases) {
        it(`refuses ${what}`, async () => {
            await assert.rejects(declare(config, password), (err: Error) => {
                assert.ok(err.message.startsWith("Invalid stack configuration:"), err.message);
                assert.ok(err.message.includes(`  - ${message}`), `expected "${message}" in:\n${err.message}`);
                return true;
            });
        });
    }

    it("gives docker:host to every step as DOCKER_HOST, beside the password where a step has it", async () => {
        const host = "ssh://admin@matrix.example.org";
        for (const config of [{ ...DEPLOY_15, settings: '{"work_mem":"16MB"}' }, UPGRADE_17]) {
            const declared = await declare({ ...config, "docker:host": host });
            const commands = declared.resources.filter((r) => r.type === "command:local:Command");
            assert.ok(commands.length >= 3, declared.names().join(", "));
            for (const c of commands) {
                const env = unwrapSecrets(c.inputs).environment ?? {};
                assert.equal(env.DOCKER_HOST, host, `${c.name}'s environment`);
            }
        }
        const upgrade = await declare({ ...UPGRADE_17, "docker:host": host });
        assert.equal(plain(upgrade, "upgrade-15-to-17-dump").environment.SYNAPSE_PG_PASSWORD, "synapse-secret");
        // Without it, no step names an engine: the docker CLI's own choice (DOCKER_HOST, a context) holds.
        const local = await declare(UPGRADE_17);
        for (const r of local.resources) assert.equal(unwrapSecrets(r.inputs).environment?.DOCKER_HOST, undefined);
    });

    it("lists every problem at once", async () => {
        await assert.rejects(declare({ version: "x", port: "0" }), (err: Error) => {
            assert.equal(err.message.split("\n  - ").length - 1, 2, err.message);
            return true;
        });
    });
});
