// check-settings: the declared settings (postgres:settings) are checked by the server's own binary before any
// container is created with them, so a typo never replaces a serving container with one that cannot start.
// `postgres -C <name> -c k=v ...` reads the cluster's files and the -c options exactly as a start would, prints
// one value and exits, without touching the running server; it refuses unknown names and invalid values.
// The start-up checks that run later than -C (wal_level against replication and archiving) are done here.
import { inspectContainer } from "../docker/containers";
import { run, ProcessError } from "../docker/process";
import { StepError } from "../step-error";

export interface CheckSettingsResult {
    /** False when there is no running container of this cluster yet to check against (a first deployment). */
    checked: boolean;
    /** The declared settings that were checked (-C prints values in base units, so these are shown as given). */
    settings: Record<string, string>;
}

/** `postgres -C` refuses to run as root; the official image's server user is postgres. */
async function postgresC(container: string, name: string, settings: Record<string, string>): Promise<string> {
    const args = Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`]);
    const { stdout } = await run("docker", ["exec", "-u", "postgres", container, "postgres", "-C", name, ...args]);
    return stdout.trim();
}

/** Checks `settings` against the cluster running in `container`; throws one sentence naming what is refused. */
export async function checkSettings(
    container: string,
    settings: Record<string, string>,
    role = "running cluster",
): Promise<CheckSettingsResult> {
    const info = await inspectContainer(container);
    if (!info?.running) return { checked: false, settings };
    const effective: Record<string, string> = {};
    try {
        // Side by side: each is a separate postgres process that reads the files and exits.
        const names = [...new Set([...Object.keys(settings), "wal_level", "max_wal_senders", "archive_mode"])];
        const values = await Promise.all(names.map((name) => postgresC(container, name, settings)));
        names.forEach((name, i) => (effective[name] = values[i]));
    } catch (err) {
        if (!(err instanceof ProcessError)) throw err;
        const reason = /FATAL:\s*(.*)/.exec(err.stderrTail)?.[1] ?? err.stderrTail;
        throw new StepError(
            `PostgreSQL in "${container}" refuses postgres:settings: ${reason}; fix the setting and run pulumi up again (the ${role} was not changed).`,
        );
    }
    // PostgreSQL checks these after -C has exited, at the start that would fail.
    if (effective.wal_level === "minimal" && Number(effective.max_wal_senders) > 0) {
        throw new StepError(
            `PostgreSQL would not start with postgres:settings: wal_level is minimal while max_wal_senders is ${effective.max_wal_senders}; set max_wal_senders to 0 or wal_level to replica (the ${role} was not changed).`,
        );
    }
    if (effective.wal_level === "minimal" && effective.archive_mode !== "off") {
        throw new StepError(
            `PostgreSQL would not start with postgres:settings: wal_level is minimal while archive_mode is ${effective.archive_mode}; set archive_mode to off or wal_level to replica (the ${role} was not changed).`,
        );
    }
    return { checked: true, settings };
}
