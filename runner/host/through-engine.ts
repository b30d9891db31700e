// The database host's folders through the Docker engine: each operation is one short-lived helper container with
// the engine host's root mounted at /host (rbind, so every file system below it is there too), no network, and
// the paths passed as arguments, never spliced into the script. The same calls work for an engine on this machine
// and one reached over ssh://, whose folders are on its own machine.
import * as path from "node:path";
import { Readable, Writable } from "node:stream";
import { MANAGED_LABEL } from "../names";
import { run } from "../docker/process";
import { HashedFile, HostFolders, HostStat } from "./folders";

const ROOT = "/host";

/** A path of the engine's host as the helper sees it; only absolute paths are accepted. */
function inHelper(p: string): string {
    if (!path.isAbsolute(p)) throw new Error(`A host path must be absolute: ${p}`);
    return ROOT + path.resolve(p);
}

/** Strips the helper's mount point from a path it printed. */
function onHost(p: string): string {
    return p.startsWith(ROOT + "/") ? p.slice(ROOT.length) : p;
}

/** Every operation a helper container of `helperImage` (any image with a POSIX shell and coreutils or busybox). */
export class EngineFolders implements HostFolders {
    /** The helpers run as root, so the tools do too. */
    readonly writer = undefined;

    constructor(private readonly helperImage: () => Promise<string>) {}

    private async sh(script: string, paths: string[], opts: Parameters<typeof run>[2] = {}): Promise<string> {
        const args = ["run", "--rm", "--network", "none", "--label", `${MANAGED_LABEL}=true`];
        if (opts.stdin !== undefined) args.push("-i");
        args.push("--mount", `type=bind,src=/,dst=${ROOT}`, "--entrypoint", "sh", await this.helperImage());
        const { stdout } = await run(
            "docker",
            [...args, "-c", `set -e; ${script}`, "sh", ...paths.map(inHelper)],
            opts,
        );
        return stdout;
    }

    private async hashWith(script: string, files: string[]): Promise<HashedFile[]> {
        if (!files.length) return [];
        // One line per file: size, then sha256sum's "<hash>  <path>".
        const out = await this.sh(
            `${script}for f in "$@"; do printf '%s ' "$(stat -c %s "$f")"; sha256sum "$f"; done`,
            files,
        );
        return out
            .split("\n")
            .filter(Boolean)
            .map((line) => {
                const [, bytes, sha256, file] = line.match(/^(\d+) ([0-9a-f]{64}) [ *](.*)$/) ?? [];
                if (!file) throw new Error(`Unexpected sha256sum output: ${line}`);
                return { file: onHost(file), bytes: Number(bytes), sha256 };
            });
    }

    async stat(p: string): Promise<HostStat | undefined> {
        const out = (await this.sh(`if [ -e "$1" ]; then stat -L -c '%F|%s|%d' "$1"; fi`, [p])).trim();
        const [kind, size, device] = out.split("|");
        return out ? { isDirectory: kind === "directory", size: Number(size), device } : undefined;
    }

    async sizes(files: string[]): Promise<(number | undefined)[]> {
        if (!files.length) return [];
        const out = await this.sh(
            `for f in "$@"; do if [ -f "$f" ]; then stat -c %s "$f"; else echo -; fi; done`,
            files,
        );
        return out
            .split("\n")
            .slice(0, files.length)
            .map((n) => (n === "-" ? undefined : Number(n)));
    }

    async freeBytes(dir: string): Promise<number> {
        const [avail, size] = (await this.sh(`stat -f -c '%a %S' "$1"`, [dir])).trim().split(" ").map(Number);
        return avail * size;
    }

    async makePrivateDir(dir: string): Promise<void> {
        await this.sh(`mkdir -p "$1"; chmod 700 "$1"`, [dir]);
    }

    async makeTempDir(prefix: string): Promise<string> {
        return onHost((await this.sh(`mktemp -d "$1/${prefix}XXXXXX"`, ["/tmp"])).trim());
    }

    async remove(p: string): Promise<void> {
        await this.sh(`rm -rf "$1"`, [p]);
    }

    async rename(from: string, to: string): Promise<void> {
        await this.sh(`mv "$1" "$2"`, [from, to]);
    }

    async readText(file: string): Promise<string | undefined> {
        // A marker character first: an empty file is "", a missing one prints nothing.
        const out = await this.sh(`if [ -f "$1" ]; then printf x; cat "$1"; fi`, [file]);
        return out.startsWith("x") ? out.slice(1) : undefined;
    }

    async writeTextAtomic(file: string, text: string): Promise<void> {
        await this.sh(`umask 077; cat > "$1.partial"; mv "$1.partial" "$1"`, [file], { stdin: text });
    }

    async listFiles(root: string): Promise<string[]> {
        const out = await this.sh(`if [ -d "$1" ]; then find "$1" -type f; else ls -d "$1"; fi`, [root]);
        return out.split("\n").filter(Boolean).map(onHost).sort();
    }

    async treeBytes(dir: string): Promise<number> {
        const out = await this.sh(`find "$1" -type f -exec stat -c %s {} +`, [dir]);
        return out
            .split("\n")
            .filter(Boolean)
            .reduce((sum, n) => sum + Number(n), 0);
    }

    hashPrivate(files: string[]): Promise<HashedFile[]> {
        return this.hashWith(`chmod 600 "$@"; `, files);
    }

    hash(files: string[]): Promise<HashedFile[]> {
        return this.hashWith("", files);
    }

    async readInto(file: string, sink: Writable): Promise<void> {
        await this.sh(`cat "$1"`, [file], { stdout: sink });
    }

    async writeFrom(file: string, source: Readable): Promise<void> {
        await this.sh(`umask 077; cat > "$1"`, [file], { stdin: source });
    }

    async readTree(root: string, sink: Writable): Promise<void> {
        await this.sh(`cd "$(dirname "$1")"; tar -cf - "$(basename "$1")"`, [root], { stdout: sink });
    }
}
