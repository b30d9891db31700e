// An upgrade under way stays where it began. Its steps name the new cluster by the config of each pulumi up: a
// postgres:dataRoot or postgres:containerPrefix changed half-way would send the rest of the upgrade to an empty
// location (cutover would then switch Synapse to an empty database) or to a second staging copy beside the first.
import { inspectContainer, ContainerInfo } from "../docker/containers";
import { run } from "../docker/process";
import { CLUSTER_LABEL, ROLE_LABEL, STANDBY_OF_LABEL } from "../names";
import { standbyContainerName } from "../pg-upgrade/standby";
import { StepError } from "../step-error";
import { DataLocation, dataLayout, formatDataLocation } from "./layout";
import { readMarkerThrough } from "./markers";

/** Throws one sentence when the upgrade of `old` under way began on another data location or staging container. */
export async function requireUpgradeWhereItBegan(
    old: string | undefined,
    staging: string,
    data: DataLocation,
    major: number,
): Promise<void> {
    // Side by side: the steps of the downtime call this.
    const [info, elsewhere] = await Promise.all([
        inspectContainer(staging),
        old === undefined ? undefined : otherUpgradeOf(old, staging, major),
    ]);
    const at = info?.labels[ROLE_LABEL] === "staging" ? dataMountOf(info, major) : undefined;
    if (at !== undefined && at !== formatDataLocation(data)) {
        throw new StepError(
            `The upgrade under way keeps its new cluster at ${at} ("${staging}"), but postgres:dataRoot now puts it at ${formatDataLocation(data)}: set postgres:dataRoot back and run pulumi up again, and change it once the upgrade is done (nothing was changed).`,
        );
    }
    if (elsewhere) {
        throw new StepError(
            `An upgrade of "${old}" is already under way in "${elsewhere}", begun with another postgres:containerPrefix or postgres:dataRoot: set them back and run pulumi up again; to give that upgrade up instead, remove "${elsewhere}" (docker rm -f; its data stays) and run pulumi up again (nothing was changed).`,
        );
    }
}

/** The volume name or host folder a staging container holds the major's data in. */
function dataMountOf(info: ContainerInfo, major: number): string | undefined {
    const m = info.mounts.find((m) => m.destination === dataLayout(major).mountTarget);
    if (!m) return undefined;
    return m.type === "volume" ? m.name : m.source;
}

/** Our staging container or standby of another name that belongs to an upgrade of `old`, if there is one. */
async function otherUpgradeOf(old: string, staging: string, major: number): Promise<string | undefined> {
    const standbys = await namesWith([`${STANDBY_OF_LABEL}=${old}`]);
    const standby = standbys.find((n) => n !== standbyContainerName(staging));
    if (standby) return standby.replace(/-standby$/, "");
    // Staging containers are named <prefix><major>-staging; a rehearsal's copy and pg_upgrade's own are not.
    const stagings = await namesWith([`${ROLE_LABEL}=staging`, `${CLUSTER_LABEL}=${major}`]);
    for (const name of stagings.filter((n) => n !== staging && n.endsWith(`${major}-staging`))) {
        const marker = await readMarkerThrough(name, major).catch(() => undefined);
        if (marker?.source.container === old) return name;
    }
    return undefined;
}

async function namesWith(labels: string[]): Promise<string[]> {
    const filters = labels.flatMap((l) => ["--filter", `label=${l}`]);
    const { stdout } = await run("docker", ["ps", "-a", ...filters, "--format", "{{.Names}}"]);
    return stdout.split("\n").filter(Boolean);
}
