// postgres:adopt: an existing (compose-managed) container as the old cluster, under mocks with inspect's facts.
import { strict as assert } from "node:assert";
import { declare } from "../../fixtures/pulumi-graph";
import { AdoptedFacts } from "../../../runner/checks/inspect";

const COMPOSE_DB: AdoptedFacts = {
    container: "synapse-db-1",
    image: "postgres:15-alpine",
    imageDigest: "postgres@sha256:" + "c".repeat(64),
    major: 15,
    version: "15.8",
    user: "synapse",
    database: "synapse",
    data: { kind: "folder", path: "/srv/synapse/pgsql15" },
    network: "synapse_default",
    hostAlias: "db",
    running: true,
};
const RUNNER = "./bin/synapse-pg";

describe("adopting a compose-managed container (postgres:adopt)", () => {
    it("refuses postgres:settings for the adopted container it does not run, and gives them to the new cluster", async () => {
        const settings = JSON.stringify({ work_mem: "16MB" });
        await assert.rejects(
            declare({ adopt: "synapse-db-1", version: "15", settings }, "pw", { adopted: COMPOSE_DB }),
            /postgres:settings applies to the clusters this program runs, not to the adopted container "synapse-db-1": set them in its compose file/,
        );
        const d = await declare({ adopt: "synapse-db-1", version: "17", backupDir: "/b", settings }, "pw", {
            adopted: COMPOSE_DB,
        });
        assert.deepEqual(d.byName("pg17-container").inputs.command, ["postgres", "-c", "work_mem=16MB"]);
    });

    it("while its major is the version, declares only its serve step: nothing that could create, replace or delete it", async () => {
        const d = await declare({ adopt: "synapse-db-1", version: "15" }, "pw", { adopted: COMPOSE_DB });
        assert.deepEqual(d.names(), ["pg15", "pg15-serve"]);
        assert.equal(
            d.byName("pg15-serve").inputs.create,
            `${RUNNER} serve --container synapse-db-1 --network synapse_default --alias db --database synapse`,
        );
    });

    it("upgrades from it: the new cluster joins its network under its service name, in a folder beside its own", async () => {
        const d = await declare(
            { adopt: "synapse-db-1", version: "17", backupDir: "/srv/synapse/backups", method: "directory" },
            "pw",
            { adopted: COMPOSE_DB },
        );
        assert.equal(
            d.resources.filter((r) => r.type === "docker:index/container:Container").length,
            1,
            "only the new container is declared",
        );
        const c = d.byName("pg17-container").inputs;
        assert.deepEqual(c.networksAdvanced, [{ name: "synapse_default", aliases: ["db"] }]);
        assert.deepEqual(c.volumes, [{ hostPath: "/srv/synapse/pgsql17", containerPath: "/var/lib/postgresql/data" }]);
        assert.equal(
            d.byName("upgrade-15-to-17-preflight").inputs.create,
            `${RUNNER} preflight --old synapse-db-1 --major 17 --image postgres:17-alpine --data /srv/synapse/pgsql17 --backup-dir /srv/synapse/backups --login-user synapse --login-database synapse`,
        );
        assert.match(
            d.byName("upgrade-15-to-17-cutover").inputs.create,
            /^\.\/bin\/synapse-pg cutover --old synapse-db-1 --new synapse-pg17-staging /,
        );
        assert.deepEqual(
            d.byName("upgrade-15-to-17-preflight").dependencies,
            [],
            "nothing of the adopted container is a resource",
        );
    });

    it("puts a new volume beside an adopted named volume", async () => {
        const d = await declare({ adopt: "synapse-db-1", version: "17", backupDir: "/b" }, "pw", {
            adopted: { ...COMPOSE_DB, data: { kind: "volume", name: "synapse_pgdata" } },
        });
        assert.equal(d.byName("pg17-data").inputs.name, "synapse-pgsql17");
        assert.equal(d.byName("pg17-data").retainOnDelete, true);
    });

    it("reverts by the earlier config: the adopted container's serve step is declared again", async () => {
        const upgrading = await declare({ adopt: "synapse-db-1", version: "17", backupDir: "/b" }, "pw", {
            adopted: COMPOSE_DB,
        });
        const reverted = await declare({ adopt: "synapse-db-1", version: "15" }, "pw", { adopted: COMPOSE_DB });
        assert.equal(upgrading.find("pg15-serve"), undefined);
        assert.ok(reverted.find("pg15-serve"));
        assert.equal(reverted.find("pg17-container"), undefined);
    });

    it("refuses a version older than the adopted container's, and an upgrade without backupDir", async () => {
        await assert.rejects(
            declare({ adopt: "synapse-db-1", version: "14" }, "pw", { adopted: COMPOSE_DB }),
            /postgres:version is "14" but the adopted container "synapse-db-1" runs 15: a downgrade is not a revert; to go back, set postgres:version 15/,
        );
        await assert.rejects(
            declare({ adopt: "synapse-db-1", version: "17", method: "directory" }, "pw", { adopted: COMPOSE_DB }),
            /postgres:backupDir is required while upgrading from 15 with method directory: the host folder the dump is written to/,
        );
        await assert.rejects(
            declare({ adopt: "synapse-db-1", version: "17", upgradeFrom: "15", backupDir: "/b" }, "pw", {
                adopted: COMPOSE_DB,
            }),
            /postgres:upgradeFrom is "15" but read from the adopted container \(postgres:adopt\), which knows its own version: remove upgradeFrom/,
        );
        await assert.rejects(
            declare({ adopt: "db;reboot", version: "17" }, "pw", { adopted: COMPOSE_DB }),
            /postgres:adopt is "db;reboot" but must be the name of a running container/,
        );
    });
});
