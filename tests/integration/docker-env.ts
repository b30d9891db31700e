// What the integration tests need from the machine, checked loudly: a Docker engine that answers and the test
// images. Nothing is skipped: without them the suite fails with a sentence saying what to run.
import { promises as fs } from "node:fs";
import { run } from "../../runner/docker/process";
import * as os from "node:os";
import * as path from "node:path";

export const TEST_IMAGE = "synapse-pg-test/postgres";
/** Every container, volume and network the tests create starts with this, so cleanup never touches others. */
export const TEST_PREFIX = "sptest-";

export async function requireDockerAndImages(majors: number[]): Promise<void> {
    try {
        await run("docker", ["info", "--format", "{{.ServerVersion}}"]);
    } catch (err) {
        throw new Error(
            `The integration tests need a Docker engine; run \`npm run images\` (as root) first: ${(err as Error).message}`,
        );
    }
    for (const major of majors) {
        try {
            await run("docker", ["image", "inspect", `${TEST_IMAGE}:${major}`]);
        } catch {
            throw new Error(`The test image ${TEST_IMAGE}:${major} is missing; run \`npm run images\` first.`);
        }
    }
}

/** Tags an image under another name, e.g. :17 as :17.5, to stand for a minor release of the same major. */
export async function tagImage(from: string, to: string): Promise<void> {
    await run("docker", ["tag", from, to]);
}

/** Removes the test's containers, volumes and networks (by name prefix). Bounded: one listing of each. */
export async function removeTestResources(prefix: string): Promise<void> {
    const list = async (args: string[]) =>
        (await run("docker", args)).stdout.split("\n").filter((n) => n.startsWith(prefix));
    const containers = await list(["ps", "-a", "--format", "{{.Names}}"]);
    if (containers.length) await run("docker", ["rm", "-f", ...containers]);
    const volumes = await list(["volume", "ls", "--format", "{{.Name}}"]);
    if (volumes.length) await run("docker", ["volume", "rm", "-f", ...volumes]);
    const networks = await list(["network", "ls", "--format", "{{.Name}}"]);
    if (networks.length) await run("docker", ["network", "rm", ...networks]);
}

export async function containerState(name: string): Promise<"running" | "stopped" | "absent"> {
    try {
        const { stdout } = await run("docker", ["inspect", "-f", "{{.State.Running}}", name]);
        return stdout.trim() === "true" ? "running" : "stopped";
    } catch {
        return "absent";
    }
}

export async function volumeExists(name: string): Promise<boolean> {
    return run("docker", ["volume", "inspect", name]).then(
        () => true,
        () => false,
    );
}

export async function volumesNamed(prefix: string): Promise<string[]> {
    const { stdout } = await run("docker", ["volume", "ls", "--format", "{{.Name}}"]);
    return stdout.split("\n").filter((n) => n.startsWith(prefix));
}

export interface Suite {
    /** The suite's own backup folder (mode 0700). */
    backups: string;
    /** The stack config every suite shares: test images, its own network, prefix and published port. */
    base: Record<string, string>;
}

/**
 * A clean start for one suite: engine and images checked (loudly), leftovers of an earlier run removed, its own
 * network and backup folder created.
 */
export async function startSuite(prefix: string, port: number, majors: number[]): Promise<Suite> {
    await requireDockerAndImages(majors);
    await removeTestResources(prefix);
    await run("docker", ["network", "create", `${prefix}net`]);
    const backups = await fs.mkdtemp(path.join(os.tmpdir(), `${prefix}backups-`));
    await fs.chmod(backups, 0o700);
    return {
        backups,
        base: {
            image: `${TEST_IMAGE}:{version}`,
            network: `${prefix}net`,
            containerPrefix: `${prefix}pg`,
            port: String(port),
            // What Synapse's docs give for a compose deployment: UTF8 with C collation.
            backupDir: backups,
            initdbArgs: "--encoding=UTF8 --lc-collate=C --lc-ctype=C",
            // The suites are about one method each; the default (pg_upgrade, or the method of an upgrade under way)
            // is exercised by synapse.test.ts, with the step runner really asked.
            method: "directory",
        },
    };
}

export async function endSuite(prefix: string, suite: Suite | undefined): Promise<void> {
    await removeTestResources(prefix);
    if (suite) await fs.rm(suite.backups, { recursive: true, force: true });
}
