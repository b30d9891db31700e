// copy-config: carries the old cluster's postgresql.conf and postgresql.auto.conf (ALTER SYSTEM settings) and its
// access rules (pg_hba.conf, pg_ident.conf) into the new cluster, so the tuning and the hardening the user did
// survive the upgrade: a `reject` line still rejects, a narrow address range stays narrow.
//
// The files are checked by the new major's own parser, not by a list typed by hand: after copying, the server
// reloads them, and pg_file_settings, pg_hba_file_rules and pg_ident_file_mappings name every line it rejects.
// Then either nothing needs a restart (done), a restart applies the rest, or the new cluster's own files are put
// back and the step stops, while Synapse is still on the old cluster.
import {
    containerLogTail,
    requireContainer,
    resumeStaging,
    startContainer,
    stopContainer,
    superuserOf,
} from "../docker/containers";
import { query, waitUntilAccepting } from "../docker/psql";
import { writeFileIn } from "../docker/files";
import { checkSettings } from "./settings";
import { serverCommand } from "./server-command";
import { requireServerStarts } from "./start-check";
import { StepError } from "../step-error";

export interface CopyConfigInput {
    from: string;
    to: string;
    /** postgres:settings: checked on the new binaries against the copied files (the serving container gets them as -c). */
    settings?: Record<string, string>;
    /**
     * postgres:dropSettings: parameters the user agreed to leave out of the new cluster when the new server rejects
     * them (the lines are commented out in the new cluster's copy; the old cluster keeps them).
     */
    drop?: string[];
    /**
     * postgres:dropAccessRules: access rules, as `pg_hba.conf:<line>` of the old cluster's file, the user agreed to
     * leave out of the new cluster when its server rejects them.
     */
    dropAccessRules?: string[];
}

/** A line of the old configuration the new server rejects: a setting, or an access rule (named `<file>:<line>`). */
export interface RejectedSetting {
    file: string;
    line: number;
    name: string;
    error: string;
    /** What to use instead, for a parameter a newer major renamed or removed. */
    hint?: string;
    /** An access rule's line as the old cluster has it. */
    rule?: string;
}

export interface CopyConfigResult {
    copied: string[];
    unchanged: string[];
    restarted: boolean;
    /** postgres:settings as the new server reads them, when any are declared. */
    declared?: Record<string, string>;
    /** Rejected lines left out of the new cluster's copy, as postgres:dropSettings or postgres:dropAccessRules allowed. */
    dropped: RejectedSetting[];
    /** archive_mode as the new cluster will run with it after the switch, when it archives (on or always). */
    archivesAfterSwitch?: string;
}

const FILES = ["postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"] as const;
type ConfigFile = (typeof FILES)[number];
const ACCESS_FILES: readonly string[] = ["pg_hba.conf", "pg_ident.conf"];

/**
 * Parameters removed by a major release that people still carry in their files, with what replaces them. Only
 * for the advice in the message: what is rejected is decided by the new server itself.
 */
export const REMOVED_PARAMETERS: Record<string, string> = {
    wal_keep_segments:
        "removed in 13: use wal_keep_size = <segments x 16MB>, e.g. wal_keep_segments = 64 becomes wal_keep_size = 1GB",
    checkpoint_segments: "removed in 9.5: use max_wal_size",
    stats_temp_directory: "removed in 15 (statistics now live in shared memory): delete the line",
    vacuum_defer_cleanup_age: "removed in 16: delete the line (use hot_standby_feedback or a replication slot instead)",
    old_snapshot_threshold: "removed in 17: delete the line",
    db_user_namespace: "removed in 17: delete the line",
    trace_recovery_messages: "removed in 17: delete the line",
    promote_trigger_file: "removed in 16: use pg_ctl promote or pg_promote()",
    force_parallel_mode: "renamed in 16: use debug_parallel_query",
    lc_messages_catalog: "not a PostgreSQL parameter: delete the line",
};

export async function copyConfig(input: CopyConfigInput): Promise<CopyConfigResult> {
    const [result, archiveMode] = await Promise.all([copyFiles(input), filesArchiveMode(input.from)]);
    // After the files, against what the new cluster will really read: the declared settings by the server's parser,
    // and a real start of the server the switch will create (start-check.ts), side by side. The parser's refusal,
    // which names the setting, is the one reported when both refuse.
    const settings = input.settings ?? {};
    const [parsed, started] = await Promise.allSettled([
        Object.keys(settings).length > 0
            ? checkSettings(input.to, settings, "old cluster").then((r) => r.settings)
            : Promise.resolve(undefined),
        requireServerStarts({ from: input.to, command: serverCommand(settings) }, "old cluster"),
    ]);
    if (parsed.status === "rejected") throw parsed.reason;
    if (started.status === "rejected") throw started.reason;
    const declared = parsed.value;
    const after = declared?.archive_mode ?? archiveMode;
    return { ...result, declared, archivesAfterSwitch: after === "on" || after === "always" ? after : undefined };
}

/**
 * archive_mode as the old cluster's files (and command line) set it: what the new cluster, which gets those files,
 * runs with once it serves. Our copies run with archiving off until then (standby.ts, NO_ARCHIVING).
 */
async function filesArchiveMode(container: string): Promise<string> {
    const info = await requireContainer(container, "old");
    const [[mode]] = await query(container, superuserOf(info), "SELECT current_setting('archive_mode')");
    return mode;
}

async function copyFiles(input: CopyConfigInput): Promise<CopyConfigResult> {
    const [from, to] = await Promise.all([
        requireContainer(input.from, "old"),
        requireContainer(input.to, "new").then(resumeStaging),
    ]);
    if (!from.running)
        throw new StepError(
            `The old container "${input.from}" is not running; copy-config reads its configuration from the live server.`,
        );
    if (!to.running) throw new StepError(`The new container "${input.to}" is not running; run the restore step first.`);
    const toUser = superuserOf(to);
    // Both clusters' four files in one psql each, side by side: each docker exec is a tenth of a second of downtime.
    const [old, now] = await Promise.all([configFiles(input.from, superuserOf(from)), configFiles(input.to, toUser)]);

    const copied: ConfigFile[] = [];
    const unchanged: string[] = [];
    const dropped: RejectedSetting[] = [];
    const copiedTexts: Partial<Record<string, string>> = {};
    for (const file of FILES) {
        const text = old[file].text;
        if (text === undefined) continue;
        if (now[file].text === text) {
            unchanged.push(file);
            continue;
        }
        copiedTexts[file] = text;
        copied.push(file);
    }
    if (copied.length === 0) return { copied, unchanged, restarted: false, dropped };
    await Promise.all(copied.map((file) => writeFileIn(input.to, now[file].path, copiedTexts[file]!)));

    let [rejected, restartOnly] = await reloadAndCheck(input.to, toUser, copiedTexts);
    const allowed = new Set([...(input.drop ?? []), ...(input.dropAccessRules ?? [])]);
    if (rejected.length > 0 && rejected.every((r) => allowed.has(r.name) && copiedTexts[r.file] !== undefined)) {
        await leaveOut(input.to, rejected, copiedTexts, now);
        dropped.push(...rejected);
        [rejected, restartOnly] = await reloadAndCheck(input.to, toUser, copiedTexts);
    }
    if (rejected.length > 0) {
        for (const file of copied)
            if (now[file].text !== undefined) await writeFileIn(input.to, now[file].path, now[file].text!);
        await query(input.to, toUser, "SELECT pg_reload_conf()");
        throw new StepError(
            refusal(rejected),
            rejected.map((r) => JSON.stringify(r)),
        );
    }
    if (restartOnly.length === 0) return { copied, unchanged, restarted: false, dropped };

    // Settings such as shared_buffers apply only at start.
    await stopContainer(input.to);
    await startContainer(input.to);
    try {
        await waitUntilAccepting(input.to, toUser, 120);
    } catch {
        throw new StepError(
            `The new PostgreSQL in "${input.to}" does not start with the old ${copied.join(" and ")} (${restartOnly.join(", ")} need a restart); log: ${await containerLogTail(input.to, 4)}`,
        );
    }
    return { copied, unchanged, restarted: true, dropped };
}

/**
 * The user agreed (postgres:dropSettings, postgres:dropAccessRules) to leave exactly these out of the new cluster:
 * their lines are commented out in its copy, saying why; the caller has the server read the files again.
 */
async function leaveOut(
    container: string,
    rejected: RejectedSetting[],
    copiedTexts: Partial<Record<string, string>>,
    now: Record<ConfigFile, { path: string; text?: string }>,
): Promise<void> {
    for (const file of new Set(rejected.map((r) => r.file))) {
        const lines = copiedTexts[file]!.split("\n");
        for (const r of rejected.filter((x) => x.file === file)) {
            const key = ACCESS_FILES.includes(file) ? "postgres:dropAccessRules" : "postgres:dropSettings";
            lines[r.line - 1] =
                `# ${lines[r.line - 1]}    # left out by synapse-postgres (${key}): ${r.hint ?? r.error}`;
        }
        await writeFileIn(container, now[file as ConfigFile].path, lines.join("\n"));
    }
}

/**
 * A cluster's configuration files where its server reads them (postgresql.auto.conf always in the data
 * directory, the others wherever config_file, hba_file and ident_file say), with their text; undefined for one
 * that is missing. Read by the server as bytes (base64), so no encoding of a comment can break the read; up to
 * 16 MB each, far beyond any configuration file.
 */
async function configFiles(
    container: string,
    user: string,
): Promise<Record<ConfigFile, { path: string; text?: string }>> {
    const rows = await query(
        container,
        user,
        `SELECT v.file, v.path, f IS NOT NULL, coalesce(encode(f, 'base64'), '')
           FROM (VALUES ('postgresql.conf', current_setting('config_file')),
                        ('postgresql.auto.conf', current_setting('data_directory') || '/postgresql.auto.conf'),
                        ('pg_hba.conf', current_setting('hba_file')),
                        ('pg_ident.conf', current_setting('ident_file'))) AS v(file, path),
                LATERAL pg_read_binary_file(v.path, 0, 16777216, true) AS f`,
    );
    return Object.fromEntries(
        rows.map(([file, path, found, base64]) => [
            file,
            { path, text: found === "t" ? Buffer.from(base64, "base64").toString("utf8") : undefined },
        ]),
    ) as Record<ConfigFile, { path: string; text?: string }>;
}

/**
 * The server reads the files again, and its own parser says what it rejects and what applies only at a restart.
 * pg_file_settings parses the files as they are on disk when asked, so it needs no wait for the reload.
 */
async function reloadAndCheck(
    container: string,
    user: string,
    texts: Partial<Record<string, string>>,
): Promise<[RejectedSetting[], string[]]> {
    const [, errors, rules] = await Promise.all([
        query(container, user, "SELECT pg_reload_conf()"),
        fileSettingErrors(container, user),
        accessRuleErrors(container, user),
    ]);
    const withText = rules.map((r) => ({ ...r, rule: (texts[r.file] ?? "").split("\n")[r.line - 1]?.trim() }));
    return [
        [...rejectedFrom(errors), ...withText],
        errors.filter(([, , , error]) => NEEDS_RESTART.test(error)).map(([, , name, error]) => name || error),
    ];
}

/**
 * Access rules the new server's parser rejects (PostgreSQL 15+ for pg_ident). One bad pg_hba.conf line makes a
 * reload keep the previous rules and a start fail, and the old server may have run for months on an older copy of
 * a file edited since, so every line is checked, named `<file>:<line>` for postgres:dropAccessRules. A line the
 * parser takes with a warning (a hostssl rule while ssl is off: it can never match, in the old cluster either) has
 * its fields filled in the view and is carried as it is.
 */
async function accessRuleErrors(container: string, user: string): Promise<RejectedSetting[]> {
    const rows = await query(
        container,
        user,
        `SELECT 'pg_hba.conf', line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL AND type IS NULL
         UNION ALL SELECT 'pg_ident.conf', line_number, error FROM pg_ident_file_mappings WHERE error IS NOT NULL AND map_name IS NULL ORDER BY 1, 2`,
    );
    return rows.map(([file, line, error]) => ({ file, line: Number(line), name: `${file}:${line}`, error }));
}

/** One rejected line for a message: file, line, and the parameter or the rule, with why. */
export function describeRejected(r: RejectedSetting): string {
    return `${r.file} line ${r.line}: ${r.rule !== undefined ? `"${r.rule}"` : r.name} (${r.hint ?? r.error})`;
}

/** The step's one sentence for rejected lines: what each is, and the two ways on. */
function refusal(rejected: RejectedSetting[]): string {
    const rules = rejected.filter((r) => ACCESS_FILES.includes(r.file));
    const settings = rejected.filter((r) => !ACCESS_FILES.includes(r.file));
    const list = rejected.map(describeRejected).join("; ");
    const ways = [
        ...(settings.length
            ? [`\`pulumi config set postgres:dropSettings ${[...new Set(settings.map((r) => r.name))].join(",")}\``]
            : []),
        ...(rules.length
            ? [`\`pulumi config set postgres:dropAccessRules ${rules.map((r) => r.name).join(",")}\``]
            : []),
    ].join(" and ");
    const what = rules.length === 0 ? "setting(s)" : settings.length === 0 ? "access rule(s)" : "line(s)";
    return `The new PostgreSQL rejects ${rejected.length} ${what} of the old configuration, so the upgrade stops before the switch: ${list}. Change them in the old cluster (ALTER SYSTEM RESET <name>, or edit the file and reload), or leave them out of the new cluster only with ${ways}, and run pulumi up again.`;
}

/**
 * pg_file_settings reports, besides real rejections, values that a reload cannot apply because they take effect
 * only at start (also for a parameter the new major added that the old file lacks, e.g. 18's
 * autovacuum_worker_slots): those need a restart, they are not errors.
 */
const NEEDS_RESTART = /cannot be changed without restarting the server|setting could not be applied/;

async function fileSettingErrors(container: string, user: string): Promise<string[][]> {
    return query(
        container,
        user,
        "SELECT coalesce(sourcefile, ''), coalesce(sourceline, 0), coalesce(name, ''), error FROM pg_file_settings WHERE error IS NOT NULL ORDER BY sourcefile, sourceline",
    );
}

/** What the server's own parser rejected in the files it read (PostgreSQL 9.5+). */
function rejectedFrom(errors: string[][]): RejectedSetting[] {
    return errors
        .filter(([, , , error]) => !NEEDS_RESTART.test(error))
        .map(([file, line, name, error]) => ({
            file: file.replace(/^.*\//, ""),
            line: Number(line),
            name: name || "(line)",
            error,
            hint: REMOVED_PARAMETERS[name],
        }));
}
