// What the stack declares for a validated config: the serving cluster, and while an upgrade is in progress (or
// until the old cluster is retired) the old cluster and the upgrade between them.
//
//   version=15                    -> cluster 15 serving
//   version=17, upgradeFrom=15    -> cluster 15 (source), upgrade 15->17, cluster 17 serving after cutover
//   version=17.6, upgradeFrom=15  -> the same; only the 17 container is replaced on the same data
//   version=15 (revert)           -> cluster 15 serving again; 17's container goes, its data is kept
//   version=17 (retire)           -> cluster 17 serving; 15's container goes, its data is kept
import * as pulumi from "@pulumi/pulumi";
import { clusterNames, DataLocation } from "../runner/layout";
import { Cluster } from "./cluster";
import { imageFor, StackConfig } from "./config";
import { MajorUpgrade } from "./upgrade";

export interface StackOutputs {
    activeVersion: string;
    hostAlias: string;
    containers: pulumi.Output<string>[];
    backupFile?: string;
    verified?: pulumi.Output<string>;
}

/** The stack's outputs, without the upgrade's while none is declared (Pulumi warns on undefined outputs). */
export function stackOutputs(s: StackOutputs): Record<string, unknown> {
    return Object.fromEntries(Object.entries(s).filter(([, v]) => v !== undefined));
}

function dataLocationOf(cfg: StackConfig, major: number): DataLocation {
    const names = clusterNames(cfg.containerPrefix, major);
    return cfg.dataRoot ? { kind: "folder", path: `${cfg.dataRoot}/${names.folder}` } : { kind: "volume", name: names.volume };
}

export function declareStack(cfg: StackConfig): StackOutputs {
    const target = cfg.version.major;
    const common = {
        user: cfg.user,
        database: cfg.database,
        password: cfg.password,
        initdbArgs: cfg.initdbArgs,
        network: cfg.network,
        hostAlias: cfg.hostAlias,
        port: cfg.port,
        synapseContainers: cfg.synapseContainers,
    };

    if (cfg.upgradeFrom === undefined) {
        const cluster = new Cluster(`pg${target}`, {
            ...common,
            major: target,
            image: imageFor(cfg.image, cfg.version.text),
            containerName: clusterNames(cfg.containerPrefix, target).container,
            data: dataLocationOf(cfg, target),
            serving: true,
        });
        return { activeVersion: cfg.version.text, hostAlias: cfg.hostAlias, containers: [cluster.containerName] };
    }

    const from = cfg.upgradeFrom.major;
    const old = new Cluster(`pg${from}`, {
        ...common,
        major: from,
        image: cfg.upgradeFromImage ?? imageFor(cfg.image, cfg.upgradeFrom.text),
        containerName: clusterNames(cfg.containerPrefix, from).container,
        data: dataLocationOf(cfg, from),
        // Declared exactly as when it served, so entering the upgrade does not touch the running old container.
        serving: false,
    });

    // The new cluster's container must wait for the upgrade's cutover, and the upgrade needs the new cluster's
    // data volume: the cluster is declared first with a promise of the cutover, kept when the upgrade exists.
    let cutoverDeclared!: (steps: pulumi.Resource[]) => void;
    const afterCutover = new Promise<pulumi.Resource[]>((resolve) => (cutoverDeclared = resolve));
    const toImage = imageFor(cfg.image, cfg.version.text);
    const names = clusterNames(cfg.containerPrefix, target);
    const cluster = new Cluster(`pg${target}`, {
        ...common,
        major: target,
        image: toImage,
        containerName: names.container,
        data: dataLocationOf(cfg, target),
        serving: true,
        startAfter: afterCutover,
    });
    const upgrade = new MajorUpgrade(`upgrade-${from}-to-${target}`, {
        fromContainer: old.containerName,
        toMajor: target,
        toImage,
        toData: dataLocationOf(cfg, target),
        stagingContainer: names.staging,
        backupDir: cfg.backupDir!,
        method: cfg.method,
        synapseContainers: cfg.synapseContainers,
        attempt: cfg.attempt,
        loginUser: cfg.user,
        loginDatabase: cfg.database,
        password: cfg.password,
        after: cluster.volume ? [old.container, cluster.volume] : [old.container],
    });
    cutoverDeclared([upgrade.cutover]);

    return {
        activeVersion: cfg.version.text,
        hostAlias: cfg.hostAlias,
        containers: [cluster.containerName, old.containerName],
        backupFile: upgrade.backupFile,
        verified: upgrade.verified,
    };
}
