// copy-config: carries the old cluster's postgresql.conf and postgresql.auto.conf (ALTER SYSTEM settings) into the
// new cluster, so the tuning the user did survives the upgrade. The new cluster keeps its own pg_hba.conf
// (scram-sha-256 for host connections).
//
// The files are checked by the new major's own parser, not by a list typed by hand: after copying, the server
// reloads them and pg_file_settings names every parameter it rejects, with file and line. Then either nothing
// needs a restart (done), a restart applies the rest, or the new cluster's own files are put back and the step
// stops, while Synapse is still on the old cluster.
import { containerLogTail, query, readFileIn, requireContainer, startContainer, stopContainer, superuserOf, waitUntilAccepting, writeFileIn } from "./docker";
import { checkSettings } from "./settings";
import { StepError } from "./step-error";

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
}

export interface RejectedSetting {
    file: string;
    line: number;
    name: string;
    error: string;
    /** What to use instead, for a parameter a newer major renamed or removed. */
    hint?: string;
}

export interface CopyConfigResult {
    copied: string[];
    unchanged: string[];
    restarted: boolean;
    /** Access rules of the old cluster (pg_hba.conf, pg_ident.conf) the new one lacks: reported, not copied. */
    accessRulesOnlyInOld: string[];
    /** postgres:settings as the new server reads them, when any are declared. */
    declared?: Record<string, string>;
    /** Rejected lines left out of the new cluster's copy, as postgres:dropSettings allowed. */
    dropped: RejectedSetting[];
}

const FILES = ["postgresql.conf", "postgresql.auto.conf"];

/**
 * Parameters removed by a major release that people still carry in their files, with what replaces them. Only
 * for the advice in the message: what is rejected is decided by the new server itself.
 */
export const REMOVED_PARAMETERS: Record<string, string> = {
    wal_keep_segments: "removed in 13: use wal_keep_size = <segments x 16MB>, e.g. wal_keep_segments = 64 becomes wal_keep_size = 1GB",
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
    const result = await copyFiles(input);
    if (!input.settings || Object.keys(input.settings).length === 0) return result;
    // After the files: the declared settings are checked against what the new cluster will really read.
    const checked = await checkSettings(input.to, input.settings, "old cluster");
    return { ...result, declared: checked.settings };
}

async function copyFiles(input: CopyConfigInput): Promise<CopyConfigResult> {
    const from = await requireContainer(input.from, "old");
    const to = await requireContainer(input.to, "new");
    if (!from.running) throw new StepError(`The old container "${input.from}" is not running; copy-config reads its configuration from the live server.`);
    if (!to.running) throw new StepError(`The new container "${input.to}" is not running; run the restore step first.`);
    const fromUser = superuserOf(from);
    const toUser = superuserOf(to);
    // Reads side by side: each docker exec is a few tenths of a second of downtime.
    const [fromDir, toDir] = await Promise.all([configDir(input.from, fromUser), configDir(input.to, toUser)]);
    const accessRules = accessRulesMissing(input.from, fromUser, input.to, toUser);
    accessRules.catch(() => undefined); // awaited below; a failure then is reported there, not as unhandled

    const texts = await Promise.all(FILES.flatMap((file) => [readFileIn(input.from, `${fromDir}/${file}`), readFileIn(input.to, `${toDir}/${file}`)]));

    const copied: string[] = [];
    const unchanged: string[] = [];
    const dropped: RejectedSetting[] = [];
    const originals: Record<string, string | undefined> = {};
    const copiedTexts: Record<string, string> = {};
    for (const [i, file] of FILES.entries()) {
        const text = texts[2 * i];
        if (text === undefined) continue;
        originals[file] = texts[2 * i + 1];
        if (originals[file] === text) {
            unchanged.push(file);
            continue;
        }
        await writeFileIn(input.to, `${toDir}/${file}`, text);
        copiedTexts[file] = text;
        copied.push(file);
    }
    const accessRulesOnlyInOld = await accessRules;
    if (copied.length === 0) return { copied, unchanged, restarted: false, accessRulesOnlyInOld, dropped };

    await query(input.to, toUser, "SELECT pg_reload_conf()");
    let rejected = await rejectedSettings(input.to, toUser);
    const allowed = new Set(input.drop ?? []);
    if (rejected.length > 0 && rejected.every((r) => allowed.has(r.name) && copiedTexts[r.file] !== undefined)) {
        // The user agreed (postgres:dropSettings) to leave exactly these out of the new cluster: their lines are
        // commented out in its copy, saying why, and the server reads the files again.
        for (const file of new Set(rejected.map((r) => r.file))) {
            const lines = copiedTexts[file].split("\n");
            for (const r of rejected.filter((x) => x.file === file)) {
                lines[r.line - 1] = `# ${lines[r.line - 1]}    # left out by synapse-postgres (postgres:dropSettings): ${r.hint ?? r.error}`;
            }
            await writeFileIn(input.to, `${toDir}/${file}`, lines.join("\n"));
        }
        dropped.push(...rejected);
        await query(input.to, toUser, "SELECT pg_reload_conf()");
        rejected = await rejectedSettings(input.to, toUser);
    }
    if (rejected.length > 0) {
        for (const file of copied) if (originals[file] !== undefined) await writeFileIn(input.to, `${toDir}/${file}`, originals[file]!);
        await query(input.to, toUser, "SELECT pg_reload_conf()");
        const list = rejected.map((r) => `${r.file} line ${r.line}: ${r.name} (${r.hint ?? r.error})`).join("; ");
        throw new StepError(
            `The new PostgreSQL rejects ${rejected.length} setting(s) of the old configuration, so the upgrade stops before the switch: ${list}. Change them in the old cluster (ALTER SYSTEM RESET <name>, or edit postgresql.conf), or leave them out of the new cluster only with \`pulumi config set postgres:dropSettings ${[...new Set(rejected.map((r) => r.name))].join(",")}\`, and run pulumi up again.`,
            rejected.map((r) => JSON.stringify(r)),
        );
    }
    const pending = [
        ...(await query(input.to, toUser, "SELECT name FROM pg_settings WHERE pending_restart ORDER BY 1")),
        ...(await restartOnlySettings(input.to, toUser)).map((n) => [n]),
    ];
    if (pending.length === 0) return { copied, unchanged, restarted: false, accessRulesOnlyInOld, dropped };

    // Settings such as shared_buffers apply only at start.
    await stopContainer(input.to);
    await startContainer(input.to);
    try {
        await waitUntilAccepting(input.to, toUser, 120);
    } catch {
        throw new StepError(
            `The new PostgreSQL in "${input.to}" does not start with the old ${copied.join(" and ")} (${pending.map(([n]) => n).join(", ")} need a restart); log: ${await containerLogTail(input.to, 4)}`,
        );
    }
    return { copied, unchanged, restarted: true, accessRulesOnlyInOld, dropped };
}

/**
 * pg_hba.conf and pg_ident.conf are not copied: the new image's rules (scram-sha-256 for every host) are the safe
 * ones, and an old `md5` or `trust` rule is exactly what should not survive. Rules the old cluster has beyond
 * them are listed so the user can carry over what they still want.
 */
async function accessRulesMissing(from: string, fromUser: string, to: string, toUser: string): Promise<string[]> {
    const missing: string[] = [];
    const rules = async (c: string, u: string, setting: string) => {
        const [[p]] = await query(c, u, `SELECT current_setting('${setting}')`);
        const text = (await readFileIn(c, p)) ?? "";
        return text.split("\n").map((l) => l.replace(/#.*/, "").trim().replace(/\s+/g, " ")).filter(Boolean);
    };
    const files = [["pg_hba.conf", "hba_file"], ["pg_ident.conf", "ident_file"]];
    const read = await Promise.all(files.flatMap(([, setting]) => [rules(from, fromUser, setting), rules(to, toUser, setting)]));
    for (const [i, [file]] of files.entries()) {
        const newRules = new Set(read[2 * i + 1]);
        for (const rule of read[2 * i]) if (!newRules.has(rule)) missing.push(`${file}: ${rule}`);
    }
    return missing;
}

/**
 * pg_file_settings reports, besides real rejections, values that a reload cannot apply because they take effect
 * only at start (also for a parameter the new major added that the old file lacks, e.g. 18's
 * autovacuum_worker_slots): those need a restart, they are not errors.
 */
const NEEDS_RESTART = /cannot be changed without restarting the server|setting could not be applied/;

async function fileSettingErrors(container: string, user: string): Promise<string[][]> {
    return query(container, user,
        "SELECT coalesce(sourcefile, ''), coalesce(sourceline, 0), coalesce(name, ''), error FROM pg_file_settings WHERE error IS NOT NULL ORDER BY sourcefile, sourceline");
}

async function restartOnlySettings(container: string, user: string): Promise<string[]> {
    return (await fileSettingErrors(container, user)).filter(([, , , error]) => NEEDS_RESTART.test(error)).map(([, , name, error]) => name || error);
}

/** What the server's own parser rejected in the files it just read (PostgreSQL 9.5+). */
export async function rejectedSettings(container: string, user: string): Promise<RejectedSetting[]> {
    const rows = (await fileSettingErrors(container, user)).filter(([, , , error]) => !NEEDS_RESTART.test(error));
    return rows.map(([file, line, name, error]) => ({
        file: file.replace(/^.*\//, ""),
        line: Number(line),
        name: name || "(line)",
        error,
        hint: REMOVED_PARAMETERS[name],
    }));
}

async function configDir(container: string, user: string): Promise<string> {
    const [[file]] = await query(container, user, "SELECT current_setting('config_file')");
    return file.replace(/\/[^/]+$/, "");
}
