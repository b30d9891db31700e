// A second Docker engine with a file system of its own, reached over SSH on 127.0.0.1: the "database host" of the
// remote-engine tests. A container of synapse-pg-test/engine (Docker and sshd, images/engine/start.sh) on this
// machine's engine, with every capability this sandbox grants (--privileged asks for one it does not), its
// /var/lib/docker in a volume, and the test images loaded into it. ssh is reached through a wrapper put first on
// PATH, with the test's own key and a shared connection, as an operator's ~/.ssh/config would give.
import { ChildProcess, spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { run, runPiped } from "../../runner/docker/process";
import { sleep } from "../../runner/host";
import { TEST_IMAGE } from "./docker-env";

export const ENGINE_IMAGE = "synapse-pg-test/engine";
/** This machine's engine, named explicitly: the suite points DOCKER_HOST at the other one. */
export const HERE = { DOCKER_HOST: "unix:///var/run/docker.sock" };

export interface RemoteEngine {
    /** ssh://root@127.0.0.1:<port> */
    dockerHost: string;
    /** DOCKER_HOST and a PATH with the ssh wrapper first: what the steps and the test's own docker calls run with. */
    env: Record<string, string>;
    /** A command run on the engine's machine (its file system, not a container of its engine). */
    onHost(script: string): Promise<string>;
    /** 127.0.0.1:<local> here forwarded to 127.0.0.1:<remote> there (a published port of the engine's). */
    forward(local: number, remote: number): Promise<void>;
    /** The network gone: every SSH connection killed, and new ones refused until reconnect. */
    cut(): Promise<void>;
    /** New connections allowed again, the forwards opened again. */
    reconnect(): Promise<void>;
    remove(): Promise<void>;
}

export async function startRemoteEngine(prefix: string, majors: number[]): Promise<RemoteEngine> {
    const name = `${prefix}engine`;
    await removeEngine(name);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), `${prefix}ssh-`));
    const key = path.join(dir, "key");
    await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key]);
    await writeSshWrapper(dir, key);
    await run(
        "docker",
        [
            ...["run", "-d", "--name", name, "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE"],
            ...["--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined"],
            ...["--security-opt", "systempaths=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"],
            ...["-v", `${name}-lib:/var/lib/docker`, "-p", "127.0.0.1::22"],
            ...["-e", `AUTHORIZED_KEY=${(await fs.readFile(`${key}.pub`, "utf8")).trim()}`, ENGINE_IMAGE],
        ],
        { env: HERE },
    );
    const port = (await run("docker", ["port", name, "22/tcp"], { env: HERE })).stdout.trim().split(":").pop();
    const dockerHost = `ssh://root@127.0.0.1:${port}`;
    const env = { DOCKER_HOST: dockerHost, PATH: `${path.join(dir, "bin")}:${process.env.PATH}` };
    await waitForEngine(env);
    for (const major of majors) await loadImage(`${TEST_IMAGE}:${major}`, env);
    const tunnels: { process: ChildProcess; local: number; remote: number }[] = [];
    const open = async (local: number, remote: number) =>
        tunnels.push({ process: await forward(env, port!, local, remote), local, remote });
    return {
        dockerHost,
        env,
        onHost: async (script) => (await run("docker", ["exec", name, "sh", "-c", script], { env: HERE })).stdout,
        forward: async (local, remote) => void (await open(local, remote)),
        async cut() {
            await fs.writeFile(path.join(dir, "cut"), "");
            await run("pkill", ["-f", key]).catch(() => undefined);
        },
        async reconnect() {
            await fs.rm(path.join(dir, "cut"), { force: true });
            for (const t of tunnels.splice(0)) {
                t.process.kill();
                await open(t.local, t.remote);
            }
        },
        async remove() {
            for (const t of tunnels) t.process.kill();
            await run("ssh", ["-O", "exit", "-p", port!, "root@127.0.0.1"], { env }).catch(() => undefined);
            await removeEngine(name);
            await fs.rm(dir, { recursive: true, force: true });
        },
    };
}

async function writeSshWrapper(dir: string, key: string): Promise<void> {
    await fs.mkdir(path.join(dir, "bin"));
    const options = [
        ...["-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"],
        ...["-o", "ControlMaster=auto", "-o", `ControlPath=${dir}/cm-%C`, "-o", "ControlPersist=60"],
    ];
    // While the file `cut` exists, as if the server were unreachable.
    const refuse = `if [ -e ${dir}/cut ]; then echo "ssh: connect to host 127.0.0.1: Connection refused" >&2; exit 255; fi`;
    await fs.writeFile(
        path.join(dir, "bin", "ssh"),
        `#!/bin/sh\n${refuse}\nexec /usr/bin/ssh ${options.join(" ")} "$@"\n`,
        { mode: 0o755 },
    );
}

/** sshd and dockerd up: bounded, 90 tries a second apart. */
async function waitForEngine(env: Record<string, string>): Promise<void> {
    let last = "";
    for (let i = 0; i < 90; i++) {
        try {
            await run("docker", ["version", "--format", "{{.Server.Version}}"], { env });
            return;
        } catch (err) {
            last = (err as Error).message;
            await sleep(1000);
        }
    }
    throw new Error(`The test's remote engine did not answer over SSH in 90 s: ${last}`);
}

async function loadImage(image: string, env: Record<string, string>): Promise<void> {
    await runPiped(
        (stdout) => run("docker", ["save", image], { env: HERE, stdout }),
        (stdin) => run("docker", ["load", "-q"], { env, stdin }),
    );
}

async function forward(env: Record<string, string>, port: string, local: number, remote: number) {
    const args = ["-N", "-o", "ControlPath=none", "-o", "ExitOnForwardFailure=yes", "-p", port];
    const tunnel = spawn("ssh", [...args, "-L", `127.0.0.1:${local}:127.0.0.1:${remote}`, "root@127.0.0.1"], {
        env: { ...process.env, ...env },
        stdio: "ignore",
    });
    // Bounded: up to 30 tries for the local end to accept connections.
    for (let i = 0; i < 30; i++) {
        const open = await run("bash", ["-c", `exec 3<>/dev/tcp/127.0.0.1/${local}`]).then(
            () => true,
            () => false,
        );
        if (open) return tunnel;
        await sleep(500);
    }
    tunnel.kill();
    throw new Error(`The SSH tunnel to the remote engine's port ${remote} did not open on 127.0.0.1:${local}.`);
}

async function removeEngine(name: string): Promise<void> {
    await run("docker", ["rm", "-f", "-v", name], { env: HERE }).catch(() => undefined);
    await run("docker", ["volume", "rm", "-f", `${name}-lib`], { env: HERE }).catch(() => undefined);
}
