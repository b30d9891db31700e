// The old image's binaries are unpacked once per image id into a volume shared by every step on the host. Two
// steps that unpack the same image at once (a rehearsal beside a prepare, two stacks on one host) must both end
// with working binaries, and a lock left by a killed step must not hold up the next one. The image here is made
// for the test (a commit of the 15 test image), so its volume is the test's alone.
import { strict as assert } from "node:assert";
import * as os from "node:os";
import { inspectContainer } from "../../runner/docker/containers";
import { run } from "../../runner/docker/process";
import { binariesVolume, oldBinaries, unpackLockOf } from "../../runner/pg-upgrade/old-binaries";
import { BINARIES_OF_LABEL, UNPACKED_BY_LABEL } from "../../runner/names";
import { removeTestResources, requireDockerAndImages, TEST_IMAGE } from "./docker-env";

const PREFIX = "sptest-bin-";
const IMAGE = `${PREFIX}image:15`;

describe("the old image's binaries, unpacked once per image", function () {
    this.timeout(10 * 60 * 1000);
    const cleanUp = async () => {
        await removeTestResources(PREFIX);
        const { stdout } = await run("docker", ["image", "inspect", "-f", "{{.Id}}", IMAGE]).catch(() => ({
            stdout: "",
        }));
        if (!stdout.trim()) return;
        const id = stdout.trim().replace(/^sha256:/, "");
        await run("docker", ["rm", "-f", unpackLockOf(id)]).catch(() => undefined);
        const volumes = await run("docker", ["volume", "ls", "-q", "--filter", `label=${BINARIES_OF_LABEL}`]);
        for (const v of volumes.stdout.split("\n").filter((n) => n.includes(id.slice(0, 12)))) {
            // A helper container of a failed unpack may still hold it.
            const users = (await run("docker", ["ps", "-aq", "--filter", `volume=${v}`])).stdout.split("\n");
            if (users.some(Boolean)) await run("docker", ["rm", "-f", ...users.filter(Boolean)]);
            await run("docker", ["volume", "rm", "-f", v]);
        }
        await run("docker", ["rmi", "-f", IMAGE]);
    };

    before(async () => {
        await requireDockerAndImages([15, 17]);
        await cleanUp();
        // A new image id (so a volume of its own), the 15 image's file system.
        await run("docker", ["create", "--name", `${PREFIX}source`, `${TEST_IMAGE}:15`]);
        await run("docker", ["commit", "--change", "LABEL sptest-bin=1", `${PREFIX}source`, IMAGE]);
        await run("docker", ["create", "--name", `${PREFIX}old`, IMAGE]);
    });
    after(cleanUp);

    it("two steps unpacking the same image at once both get working binaries, unpacked once", async () => {
        const old = (await inspectContainer(`${PREFIX}old`))!;
        const both = await Promise.all([1, 2].map(() => oldBinaries(old, `${TEST_IMAGE}:17`, 15)));
        for (const b of both) assert.match(b.version, /^postgres \(PostgreSQL\) 15\./);
        assert.deepEqual(both[0], both[1]);
        assert.equal(both[0].volume, binariesVolume(old));
        const holder = unpackLockOf(old.imageId);
        assert.equal((await inspectContainer(holder)) ?? "gone", "gone", "the lock is released");
    });

    it("a lock left by a step that was killed is taken over at once", async () => {
        const old = (await inspectContainer(`${PREFIX}old`))!;
        await run("docker", ["volume", "rm", "-f", binariesVolume(old)]);
        const holder = unpackLockOf(old.imageId);
        // A pid that no process has: the step that made it is gone.
        const dead = `${os.hostname()}:${2 ** 22 + 1}`;
        await run("docker", ["create", "--name", holder, "--label", `${UNPACKED_BY_LABEL}=${dead}`, IMAGE]);
        const got = await oldBinaries(old, `${TEST_IMAGE}:17`, 15);
        assert.match(got.version, /^postgres \(PostgreSQL\) 15\./);
        assert.equal((await inspectContainer(holder)) ?? "gone", "gone");
    });
});
