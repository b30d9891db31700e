// What the steps say on stdout when a result needs more than one sentence, or the same words in two steps.
import { CopyConfigResult, describeRejected } from "../config/copy-config";
import { formatBytes } from "../host";
import { describeUpdates } from "../checks/extensions";
import { describeFence, Fence } from "../switch/fence";
import { describeCarried } from "../pg-upgrade/not-replicated";
import { PrepareResult, UpgradeResult } from "../pg-upgrade/upgrade";
import { PreflightResult } from "../checks/preflight";
import { RehearsalReport } from "../checks/rehearse";
import { ServeResult } from "../switch/serve";

export type Out = (line: string) => void;

/** "a", "a and b", "a, b and c". */
export function listed(items: string[]): string {
    return items.length <= 1 ? items.join("") : `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
}

/** "work_mem=16MB, max_connections=200". */
export function settingsList(settings: Record<string, string>): string {
    return Object.entries(settings)
        .map(([k, v]) => `${k}=${v}`)
        .join(", ");
}

/** What copy-config did, in its words; also what prepare says after it carried the configuration across. */
export function reportConfig(step: string, r: CopyConfigResult, out: Out): void {
    for (const d of r.dropped) {
        const key = /^pg_(hba|ident)\.conf$/.test(d.file) ? "postgres:dropAccessRules" : "postgres:dropSettings";
        out(
            `${step}: left out of the new cluster, as ${key} allows: ${describeRejected(d)}; the old cluster keeps it.`,
        );
    }
    out(
        r.copied.length === 0
            ? `${step}: ${listed(r.unchanged)} already in place; nothing to do.`
            : `${step}: copied ${listed(r.copied)}; the new server accepted every setting${r.restarted ? " and restarted with them" : " (applied by reload, no restart needed)"}.`,
    );
    if (r.archivesAfterSwitch)
        out(
            `${step}: the old cluster archives WAL (archive_mode=${r.archivesAfterSwitch}); the copies made for the upgrade archive nothing, but after the switch the new cluster archives with the same archive_command: a new major needs an archive of its own (a new pgBackRest stanza, another folder), so point it elsewhere with postgres:settings before the switch.`,
        );
    out(
        `${step}: the server the switch will create (the new image, this configuration, postgres:settings) started and stopped cleanly in a throw-away container.`,
    );
    if (r.declared)
        out(
            `${step}: the new server accepts postgres:settings (${settingsList(r.declared)}); its container starts with them after the switch.`,
        );
}

/** "<step>: fenced "old": took it off the network net, ended 1 client session(s); ..." */
export function fenceLine(step: string, old: string, fence: Fence): string {
    const done = describeFence(fence);
    return done
        ? `${step}: fenced "${old}" until the switch: ${done}; nothing can write to it now (our steps reach it with docker exec).`
        : `${step}: "${old}" was already fenced; no client session was left to end.`;
}

export function reportRehearsal(r: RehearsalReport, out: Out): void {
    const via =
        r.method === "pg_upgrade"
            ? r.pgUpgradeVia === "link"
                ? "pg_upgrade --link on a standby"
                : "pg_upgrade --copy"
            : `dump ${formatBytes(r.dumpBytes)}`;
    out(
        `rehearse: ${r.source.container} (PostgreSQL ${r.source.version}, ${formatBytes(r.source.databasesBytes)}) -> ${r.target.image} (PostgreSQL ${r.target.version})`,
    );
    out(
        `rehearse: ${Object.entries(r.timings)
            .map(([k, v]) => `${k} ${v.toFixed(1)} s`)
            .join(", ")}`,
    );
    out(`rehearse: predicted downtime of the real upgrade: about ${Math.ceil(r.predictedDowntimeSeconds)} s (${via})`);
    if (r.liveWrites.length)
        out(`rehearse: ${r.liveWrites.length} table(s) grew during the rehearsal (Synapse kept writing), as expected`);
    for (const p of r.problems) out(`rehearse: problem: ${p}`);
    out(
        r.verified && r.problems.length === 0
            ? "rehearse: no problems found."
            : `rehearse: ${r.problems.length} problem(s) to fix before the real upgrade.`,
    );
    if (r.target.kept) out(`rehearse: kept ${r.target.container} running`);
}

export function reportPreflight(r: PreflightResult, old: string, backupDir: string | undefined, out: Out): void {
    if (r.createdBackupDir)
        out(
            `preflight: created the backup folder ${backupDir} (mode 0700: the dump holds every role's password hash).`,
        );
    out(
        `preflight: "${old}" runs PostgreSQL ${r.sourceVersion}, ${formatBytes(r.databasesBytes)} of databases, no other clients; new data location: ${r.target}. Ready.`,
    );
    if (r.md5Roles.length) {
        out(
            `preflight: warning: ${r.md5Roles.join(", ")} ha${r.md5Roles.length === 1 ? "s" : "ve"} an md5 password hash, which a scram-sha-256 access rule refuses and PostgreSQL 18 deprecates; the Synapse role is re-set as scram-sha-256 after the restore; for any other, run \\password <name> in psql on the new cluster (psql sends the server only the scram hash).`,
        );
    }
}

export function reportPrepare(
    r: PrepareResult,
    f: { old: string; new: string; major: string; image: string },
    out: Out,
): void {
    if (r.config) reportConfig("prepare", r.config, out);
    if (r.extensionUpdates.length)
        out(
            `prepare: pg_upgrade keeps each extension's version; serve updates these once the new cluster serves: ${describeUpdates(r.extensionUpdates)}.`,
        );
    if (r.setAsideTo)
        out(
            `prepare: the earlier ${f.major} cluster, which served Synapse before a revert, was kept at ${r.setAsideTo}`,
        );
    out(
        `prepare: ${r.binaries.version} runs inside ${f.image} from ${r.binaries.volume}; ${r.reused ? "the new cluster was already prepared" : "new cluster initialised"} in "${f.new}" (stopped).`,
    );
    out(
        r.standby
            ? `prepare: the standby "${r.standby}" streams from "${f.old}"; the upgrade will link its files, not copy the old data while Synapse is down${r.unlogged ? `; ${r.unlogged}, which a standby holds empty: the upgrade copies what they hold once Synapse has stopped` : ""}.`
            : `prepare: no standby (${r.noStandby}); the upgrade will copy the old data while Synapse is down.`,
    );
}

export function reportUpgrade(r: UpgradeResult, f: { old: string; new: string }, out: Out): void {
    if (r.fence) out(fenceLine("upgrade", f.old, r.fence));
    if (r.rehashed)
        out(
            `upgrade: the role ${r.rehashed} had an md5 password hash; it was re-set as scram-sha-256 from the configured password.`,
        );
    if (r.carried) out(`upgrade: ${describeCarried(r.carried)}.`);
    out(
        r.alreadyDone
            ? `upgrade: "${f.new}" already holds the upgraded cluster; nothing to do.`
            : r.via === "link"
              ? `upgrade: pg_upgrade --link on the standby of "${f.old}" into "${f.new}" in ${r.seconds.toFixed(1)} s; the old cluster was never stopped and is unchanged.`
              : `upgrade: pg_upgrade --copy from "${f.old}" into "${f.new}" in ${r.seconds.toFixed(1)} s; the old cluster is unchanged and running again.`,
    );
}

export function reportServe(r: ServeResult, f: { container: string; network: string; alias: string }, out: Out): void {
    if (r.eventsLost !== undefined)
        out(
            `serve: reverted; ${r.eventsLost === "uncounted" ? "an uncounted number of" : r.eventsLost} event(s) written since the switch stay only in the newer cluster; cleared ${r.oneTimeKeysCleared ?? 0} one-time keys so clients upload fresh ones.`,
        );
    const stopped = r.stoppedOthers.length ? ` (stopped ${r.stoppedOthers.join(", ")})` : "";
    out(
        `serve: "${f.container}" answers as "${f.alias}" on "${f.network}" with PostgreSQL ${r.version}${stopped}${r.started ? "" : "; it was already running"}.`,
    );
    if (r.extensions?.updated.length)
        out(
            `serve: updated the extensions pg_upgrade kept at their old versions: ${r.extensions.updated.map((u) => `${u.name} ${u.version} -> ${u.to} in ${u.database}`).join(", ")}.`,
        );
    if (r.extensions?.failed.length)
        out(
            `serve: warning: could not update ${r.extensions.failed.join(", ")}; it works at its old version, run ALTER EXTENSION ... UPDATE by hand.`,
        );
    if (r.passwordSet)
        out(
            `serve: the role ${r.passwordSet} did not log in with postgres:password; its password was set to it (as a scram-sha-256 verifier), and it logs in over TCP now.`,
        );
    if (r.fenceLifted)
        out(
            `serve: "${f.container}" is back on ${listed(r.fenceLifted) || "its networks"}, which an upgrade that never switched had taken it off.`,
        );
    if (r.standbysRemoved.length)
        out(
            `serve: removed the standby ${r.standbysRemoved.join(", ")} that an upgrade which never switched left following "${f.container}".`,
        );
    if (r.synapseStarted.length) out(`serve: started Synapse (${r.synapseStarted.join(", ")}).`);
}
