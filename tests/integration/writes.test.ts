// The files we write into a cluster's data (the upgrade marker, the carried configuration) survive a write that
// dies half-way: the previous file stays whole, so no later step meets a torn marker.
import { strict as assert } from "node:assert";
import { MARKER_FILE } from "../../runner/target/markers";
import { waitUntilAccepting } from "../../runner/docker/psql";
import { writeFileIn } from "../../runner/docker/files";
import { run } from "../../runner/docker/process";
import { removeTestResources, requireDockerAndImages, TEST_IMAGE } from "./docker-env";

const PREFIX = "sptest-write-";
const CONTAINER = `${PREFIX}pg17`;
const FILE = `/var/lib/postgresql/data/${MARKER_FILE}`;

describe("writes into a cluster's data", function () {
    this.timeout(5 * 60 * 1000);

    before(async () => {
        await requireDockerAndImages([17]);
        await removeTestResources(PREFIX);
        await run("docker", [
            "run",
            "-d",
            "--name",
            CONTAINER,
            "-e",
            "POSTGRES_PASSWORD=write-test",
            `${TEST_IMAGE}:17`,
        ]);
        await waitUntilAccepting(CONTAINER, "postgres");
    });

    after(() => removeTestResources(PREFIX));

    const content = async () => (await run("docker", ["exec", CONTAINER, "cat", FILE])).stdout;

    it("a write whose client is killed half-way leaves the previous file whole", async () => {
        const previous = JSON.stringify({ state: "verified" }) + "\n";
        await writeFileIn(CONTAINER, FILE, previous);
        // Large enough that the kill lands while the bytes still flow; the kill is retried for at most 10 s.
        const next = "x".repeat(256 * 1024 * 1024);
        let finished = false;
        const writing = writeFileIn(CONTAINER, FILE, next)
            .then(
                () => "written",
                (err: Error) => err.message,
            )
            .finally(() => (finished = true));
        let killed = false;
        for (let i = 0; i < 100 && !killed && !finished; i++) {
            await new Promise((r) => setTimeout(r, 100));
            killed = await run("pkill", ["-f", `docker exec -i -u postgres ${CONTAINER} `]).then(
                () => true,
                () => false,
            );
        }
        const outcome = await writing;
        assert.ok(killed, `the write was killed while it ran (it ended: ${outcome})`);
        assert.notEqual(outcome, "written");
        assert.equal(await content(), previous, "the previous file, whole");
    });

    it("a complete write replaces the file, and a second one replaces it again", async () => {
        await writeFileIn(CONTAINER, FILE, "first\n");
        assert.equal(await content(), "first\n");
        await writeFileIn(CONTAINER, FILE, "second ✓\n");
        assert.equal(await content(), "second ✓\n");
        const owner = (await run("docker", ["exec", CONTAINER, "stat", "-c", "%U %a", FILE])).stdout.trim();
        assert.match(owner, /^postgres /, "the server's user owns it");
    });
});
