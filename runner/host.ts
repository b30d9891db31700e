// The machine the runner runs on: its clock, a folder's free space, a file written whole or not at all, and
// sizes as people read them.
import { promises as fs } from "node:fs";

export function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Free bytes for an unprivileged writer in `dir`. */
export async function freeBytes(dir: string): Promise<number> {
    const s = await fs.statfs(dir);
    return s.bavail * s.bsize;
}

export function formatBytes(n: number): string {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) {
        n /= 1000;
        i++;
    }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export async function writeFileAtomic(file: string, text: string): Promise<void> {
    const tmp = `${file}.partial`;
    await fs.writeFile(tmp, text, { mode: 0o600 });
    await fs.rename(tmp, file);
}
