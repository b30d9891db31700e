// The serving container's server command and shared memory, from postgres:settings. Declared by the Pulumi layer
// (components/cluster.ts) and started for real by the step runner's start check (start-check.ts) before a
// replacement: both must build exactly the same server, so both take it from here.

/** A PostgreSQL memory size in bytes ("1GB", "512MB", or a plain number of 8 kB pages); undefined if unreadable. */
export function sizeInBytes(text: string): number | undefined {
    const m = /^\s*(\d+)\s*(B|kB|MB|GB|TB)?\s*$/.exec(text);
    if (!m) return undefined;
    const unit = { B: 1, kB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4 }[m[2] ?? ""] ?? 8192;
    return Number(m[1]) * unit;
}

/**
 * The container's /dev/shm in MB: Docker's 64 MB default is too small for the parallel workers' shared memory
 * on a tuned server, so it follows shared_buffers (never below the default). Always a number: the provider keeps
 * a container's value for an absent input, so taking shared_buffers out would otherwise change nothing.
 */
export function shmSizeFor(settings: Record<string, string>): number {
    if (settings.shared_buffers === undefined) return DOCKER_SHM_MB;
    return Math.max(DOCKER_SHM_MB, Math.ceil(sizeInBytes(settings.shared_buffers)! / 1024 ** 2));
}

const DOCKER_SHM_MB = 64;

/**
 * The server's command line with the declared settings, as the official image takes it (`postgres -c k=v`);
 * without settings the image's own `postgres`, declared all the same: the provider keeps a container's command
 * for an absent input, so removing the last setting would never reach the server.
 */
export function serverCommand(settings: Record<string, string>): string[] {
    return ["postgres", ...Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`])];
}

/** postgres:settings back from a server command built by serverCommand (what before-replace is given). */
export function settingsOf(command: string[]): Record<string, string> {
    const settings: Record<string, string> = {};
    for (let i = 1; i + 1 < command.length; i += 2) {
        const [key, ...value] = command[i + 1].split("=");
        if (command[i] === "-c") settings[key] = value.join("=");
    }
    return settings;
}
