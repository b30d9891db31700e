// Adopting the database a user already runs: a container started the way Synapse's docker compose file starts it
// (service network, alias db, a ./pgsql15 bind folder, compose labels), upgraded by config, reverted by config. A
// client in another container on the same network connects by the name Synapse uses, as Synapse would.
import { strict as assert } from "node:assert";
import { promises as fs } from "node:fs";
import { run } from "../../runner/docker/process";
import { declare } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { Applier, runShell } from "./applier";
import { containerState, removeTestResources, requireDockerAndImages, TEST_IMAGE } from "./docker-env";
import * as os from "node:os";
import * as path from "node:path";

const PREFIX = "sptest-adopt-";
const NETWORK = `${PREFIX}default`;
const DB = `${PREFIX}db-1`;
const PASSWORD = "compose-Pässword-3";

/** What a client sees when it connects to "db" over the network with the password, as Synapse does. */
async function asSynapse(sql: string): Promise<string> {
    const { stdout } = await run(
        "docker",
        [
            "run",
            "--rm",
            "--network",
            NETWORK,
            "-e",
            "PGPASSWORD",
            `${TEST_IMAGE}:17`,
            "psql",
            "-X",
            "-h",
            "db",
            "-U",
            "synapse",
            "-d",
            "synapse",
            "-Atc",
            sql,
        ],
        { env: { PGPASSWORD: PASSWORD } },
    );
    return stdout.trim();
}

const CONTENT = `SELECT current_setting('server_version_num')::int / 10000, (SELECT count(*) FROM events),
    (SELECT md5(string_agg(e::text, '' ORDER BY e.stream_ordering)) FROM events e),
    (SELECT md5(string_agg(j::text, '' ORDER BY j.event_id)) FROM event_json j),
    (SELECT md5(string_agg(s::text, '' ORDER BY s::text)) FROM state_groups_state s),
    (SELECT last_value FROM events_stream_seq)`;

describe("adopting a compose-managed database: upgrade by config, revert by config", function () {
    this.timeout(15 * 60 * 1000);
    let root: string;
    let backups: string;
    let adoptedId: string;
    let original: string[];
    const applier = new Applier();
    const realInspect = async (command: string) => (await runShell(command, {})).stdout;
    const up = async (cfg: Record<string, string>) =>
        applier.up(
            await declare(
                {
                    adopt: DB,
                    image: `${TEST_IMAGE}:{version}`,
                    containerPrefix: `${PREFIX}pg`,
                    backupDir: backups,
                    ...cfg,
                },
                PASSWORD,
                { adopted: realInspect },
            ),
        );

    before(async () => {
        await requireDockerAndImages([15, 17]);
        await removeTestResources(PREFIX);
        root = await fs.mkdtemp(path.join(os.tmpdir(), "synapse-compose-"));
        backups = path.join(root, "backups");
        await fs.mkdir(backups, { mode: 0o700 });
        await run("docker", ["network", "create", NETWORK]);
        // As Synapse's docker-compose.yml starts its db service.
        await run(
            "docker",
            [
                "run",
                "-d",
                "--name",
                DB,
                "--network",
                NETWORK,
                "--network-alias",
                "db",
                "--label",
                "com.docker.compose.project=sptest-adopt",
                "--label",
                "com.docker.compose.service=db",
                "--restart",
                "unless-stopped",
                "-e",
                "POSTGRES_USER=synapse",
                "-e",
                "POSTGRES_PASSWORD",
                "-e",
                "POSTGRES_INITDB_ARGS=--encoding=UTF-8 --lc-collate=C --lc-ctype=C",
                "-v",
                `${root}/pgsql15:/var/lib/postgresql/data`,
                `${TEST_IMAGE}:15`,
            ],
            { env: { POSTGRES_PASSWORD: PASSWORD } },
        );
        for (
            let i = 0;
            i < 60 &&
            !(await asSynapse("SELECT 1").then(
                () => true,
                () => false,
            ));
            i++
        )
            await new Promise((r) => setTimeout(r, 1000));
        await seedSynapse(DB, "synapse", { sizeMB: 10, seed: 5 });
        adoptedId = (await run("docker", ["inspect", "-f", "{{.Id}}", DB])).stdout.trim();
        original = (await asSynapse(CONTENT)).split("|");
        assert.equal(original[0], "15");
    });

    after(async () => {
        await removeTestResources(PREFIX);
        await run("docker", [
            "run",
            "--rm",
            "-v",
            `${root}:/r`,
            "--entrypoint",
            "rm",
            `${TEST_IMAGE}:17`,
            "-rf",
            "/r/pgsql15",
            "/r/pgsql17",
        ]).catch(() => undefined);
        await fs.rm(root, { recursive: true, force: true });
    });

    it("refuses an old container with restart: always, which a reboot would start beside the new one, saying what to change", async () => {
        await run("docker", ["update", "--restart", "always", DB]);
        await assert.rejects(up({ version: "17" }), (err: Error) => {
            assert.match(
                err.message,
                /synapse-pg (prepare|preflight): The old container "sptest-adopt-db-1" has restart policy "always": after a reboot or a Docker daemon restart it would start again beside the new cluster, and two servers would answer to Synapse; change it first with `docker update --restart unless-stopped sptest-adopt-db-1` \(and `restart: unless-stopped` in its compose file, so the next docker compose up keeps it\), and run pulumi up again\./,
            );
            return true;
        });
        assert.equal(
            await asSynapse("SELECT current_setting('server_version_num')::int / 10000"),
            "15",
            "15 serves on, untouched",
        );
        await run("docker", ["update", "--restart", "unless-stopped", DB]);
    });

    it("refuses while a client is connected, naming it; once it is gone, upgrades to 17 reachable as db", async () => {
        // An idle connection, as Synapse's pool holds: psql waiting on its input.
        await run(
            "docker",
            [
                "run",
                "-d",
                "--name",
                `${PREFIX}synapse`,
                "--network",
                NETWORK,
                "-e",
                "PGPASSWORD",
                "-e",
                "PGAPPNAME=synapse_main",
                "--entrypoint",
                "sh",
                `${TEST_IMAGE}:17`,
                "-c",
                "sleep 600 | psql -h db -U synapse -d synapse",
            ],
            { env: { PGPASSWORD: PASSWORD } },
        );
        const clients = async () =>
            (
                await run("docker", [
                    "exec",
                    DB,
                    "psql",
                    "-U",
                    "synapse",
                    "-d",
                    "postgres",
                    "-Atc",
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'synapse_main'",
                ])
            ).stdout.trim();
        for (let i = 0; i < 50 && (await clients()) !== "1"; i++) await new Promise((r) => setTimeout(r, 200));
        await assert.rejects(
            up({ version: "17" }),
            /synapse-pg preflight: 1 client\(s\) are still connected to "sptest-adopt-db-1" \(synapse_main from [0-9.]+ on synapse\)/,
        );
        // The client goes away; its server process ends when the connection closes.
        await run("docker", ["rm", "-f", `${PREFIX}synapse`]);
        for (let i = 0; i < 50 && (await clients()) !== "0"; i++) await new Promise((r) => setTimeout(r, 200));

        const mark = applier.commandRuns.length;
        await up({ version: "17" });
        // postgres:method unset: the default, pg_upgrade on a standby made in the folder beside ./pgsql15.
        assert.match(
            applier.commandRuns.slice(mark).find((c) => c.name === "upgrade-15-to-17-upgrade")!.stdout,
            /upgrade: pg_upgrade --link on the standby of "sptest-adopt-db-1" into "sptest-adopt-pg17-staging"/,
        );
        const after = (await asSynapse(CONTENT)).split("|");
        assert.equal(after[0], "17", "the name db now reaches PostgreSQL 17");
        assert.deepEqual(after.slice(1), original.slice(1), "same events, event JSON, state and stream position");
        assert.equal(await containerState(DB), "stopped", "the adopted container is stopped, not removed");
        assert.equal(
            (await run("docker", ["inspect", "-f", "{{.Id}}", DB])).stdout.trim(),
            adoptedId,
            "and never replaced",
        );
        const pgVersion = await run("docker", [
            "run",
            "--rm",
            "-v",
            `${root}:/r`,
            "--entrypoint",
            "cat",
            `${TEST_IMAGE}:17`,
            "/r/pgsql17/PG_VERSION",
        ]);
        assert.equal(pgVersion.stdout.trim(), "17", "the new data is in ./pgsql17 beside ./pgsql15");
    });

    it("reverts by config: db reaches the adopted 15 again, with its data as before", async () => {
        await up({ version: "15" });
        const reverted = (await asSynapse(CONTENT)).split("|");
        assert.deepEqual(reverted, original);
        assert.equal(await containerState(DB), "running");
        assert.equal(await containerState(`${PREFIX}pg17`), "absent");
        assert.equal((await run("docker", ["inspect", "-f", "{{.Id}}", DB])).stdout.trim(), adoptedId);
    });
});
