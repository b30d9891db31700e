// A PostgreSQL cluster of one major: its data (volume or host folder), its container, and, while it is the one
// Synapse should reach, the serve step.
import * as command from "@pulumi/command";
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import { DataLocation, dataLayout, formatDataLocation, HEALTHCHECK_INTERVAL_SECONDS } from "../runner/target/layout";
import { stepCommand, stepEnvironment } from "./command-line";
import { serverCommand, shmSizeFor } from "../runner/config/server-command";
import { CLUSTER_LABEL, MANAGED_LABEL, PASSWORD_ENV } from "../runner/names";

export interface ClusterArgs {
    /**
     * An existing container (postgres:adopt) that is this cluster: nothing is declared for its data or container,
     * so Pulumi never creates, replaces or deletes it; only its serve step, while it should serve.
     */
    adopt?: string;
    /** The major; a plain number because it decides where the data is mounted. */
    major: number;
    /** The image, e.g. postgres:17-alpine or postgres@sha256:<digest>. */
    image: pulumi.Input<string>;
    /** Container name, e.g. synapse-pg17. */
    containerName: string;
    /** Where the data lives; plain because it decides which resources exist. */
    data: DataLocation;
    /** Bootstrap superuser and database, used by the image only on first start of an empty data location. */
    user: pulumi.Input<string>;
    database: pulumi.Input<string>;
    /** docker:host: where the cluster's steps reach Docker. */
    dockerHost?: string;
    /** The bootstrap superuser's password: a secret, passed only in the container's environment. */
    password: pulumi.Input<string>;
    /** initdb arguments for a first start. */
    initdbArgs: pulumi.Input<string>;
    /** postgres:settings: the server's `-c` options; shared_buffers also sizes the container's /dev/shm. */
    settings?: Record<string, string>;
    /** The Docker network Synapse uses, and the host name Synapse connects to. */
    network: pulumi.Input<string>;
    hostAlias: pulumi.Input<string>;
    /** Publish 5432 on 127.0.0.1:<port>. */
    port?: pulumi.Input<number>;
    /**
     * Declare the serve step: this cluster is the one that should answer to hostAlias. A cluster that does not
     * serve is an upgrade's source: its container is kept exactly as it ran (see below).
     */
    serving: boolean;
    /** Synapse's containers: the serve step stops them for a switch and starts them once this cluster serves. */
    synapseContainers?: string[];
    /** Events a revert to this cluster may lose (postgres:revertAcceptLoss); without it such a revert is refused. */
    revertAcceptLoss?: number | "any";
    /** The container is created only after these (an upgrade's cutover). */
    startAfter?: pulumi.Input<pulumi.Resource[]>;
}

/**
 * Every input of the source cluster's container whose change would make the Docker provider replace it (and a
 * replacement is a new container, started), while it is not the serving one.
 */
const SOURCE_KEEPS = ["image", "command", "shmSize", "envs", "networksAdvanced", "ports", "volumes", "labels", "name"];

export class Cluster extends pulumi.ComponentResource {
    readonly containerName: pulumi.Output<string>;
    readonly dataLocation: string;
    readonly volume?: docker.Volume;
    /** The container, unless adopted. */
    readonly container?: docker.Container;
    readonly serve?: command.local.Command;
    /** Checks declared settings with the running server's binary before its container is replaced with them. */
    readonly checkSettings?: command.local.Command;
    /** Stops Synapse before the serving container is replaced (a minor update, new settings). */
    readonly beforeReplace?: command.local.Command;

    constructor(name: string, args: ClusterArgs, opts?: pulumi.ComponentResourceOptions) {
        super("synapse-postgres:index:Cluster", name, {}, opts);
        this.dataLocation = formatDataLocation(args.data);

        if (args.adopt !== undefined) {
            this.containerName = pulumi.output(args.adopt);
            if (args.serving) this.serve = this.declareServe(name, args, this.containerName, []);
            this.registerOutputs({ containerName: this.containerName, dataLocation: this.dataLocation });
            return;
        }
        if (args.data.kind === "volume") this.volume = this.declareVolume(name, args.data.name, args.major);
        if (args.serving) {
            this.checkSettings = this.declareCheckSettings(name, args);
            this.beforeReplace = this.declareBeforeReplace(name, args, this.checkSettings);
        }
        const beforeContainer = [this.volume, this.checkSettings, this.beforeReplace].filter((r) => r !== undefined);
        const dependsOn = pulumi.output(args.startAfter ?? []).apply((after) => [...beforeContainer, ...after]);
        this.container = new docker.Container(`${name}-container`, containerInputs(args, this.volume), {
            parent: this,
            dependsOn,
            // A named container cannot exist twice: remove the old one (data stays) before creating its successor.
            deleteBeforeReplace: true,
            // An upgrade's source runs on as it was until the switch and stays as it was after it. No change in the
            // same config (image template, settings, password, network, alias, port, dataRoot, prefix) replaces
            // it: a replacement would start it beside the new cluster, or restart the old cluster on other
            // binaries or untested settings; a revert then starts the very container (and image) that wrote the
            // old data.
            ignoreChanges: args.serving ? [] : SOURCE_KEEPS,
        });
        this.containerName = this.container.name;
        if (args.serving) this.serve = this.declareServe(name, args, this.container.name, [this.container]);
        this.registerOutputs({ containerName: this.containerName, dataLocation: this.dataLocation });
    }

    private declareVolume(name: string, volume: string, major: number): docker.Volume {
        return new docker.Volume(
            `${name}-data`,
            { name: volume, labels: clusterLabels(major) },
            {
                parent: this,
                // Removing this cluster from the stack (retire, revert) must never delete its data: the volume
                // stays in Docker. A host folder needs no resource: nothing here ever deletes it.
                retainOnDelete: true,
            },
        );
    }

    /** Every change of the settings is checked again before the container that carries them. */
    private declareCheckSettings(name: string, args: ClusterArgs): command.local.Command | undefined {
        const settings = args.settings ?? {};
        if (Object.keys(settings).length === 0) return undefined;
        const create = stepCommand("check-settings", {
            container: args.containerName,
            settings: JSON.stringify(settings),
        });
        return new command.local.Command(
            `${name}-check-settings`,
            { create, environment: stepEnvironment(args.dockerHost), triggers: [JSON.stringify(settings)] },
            { parent: this },
        );
    }

    /**
     * Before the serving container is replaced (runner/switch/before-replace.ts): a new data location that is empty
     * is refused, and a running Synapse is stopped, after the settings were accepted; the serve step after the new
     * container starts it.
     */
    private declareBeforeReplace(
        name: string,
        args: ClusterArgs,
        checked?: command.local.Command,
    ): command.local.Command {
        const port = pulumi.output(args.port).apply((p) => (p === undefined ? "" : String(p)));
        const settings = args.settings ?? {};
        const declared = {
            image: args.image,
            command: JSON.stringify(serverCommand(settings)),
            data: this.dataLocation,
        };
        const place = { major: args.major, port, network: args.network, alias: args.hostAlias };
        const bootstrap = { user: args.user, database: args.database };
        const synapse: Record<string, string> = args.synapseContainers?.length
            ? { synapse: args.synapseContainers.join(",") }
            : {};
        return new command.local.Command(
            `${name}-before-replace`,
            {
                create: stepCommand("before-replace", {
                    container: args.containerName,
                    ...declared,
                    ...place,
                    ...bootstrap,
                    ...synapse,
                }),
                // Every input that replaces the container; the password as a secret (compared in the step's env).
                environment: stepEnvironment(args.dockerHost, { [PASSWORD_ENV]: pulumi.secret(args.password) }),
                triggers: [
                    args.image,
                    JSON.stringify(settings),
                    this.dataLocation,
                    port,
                    args.network,
                    args.hostAlias,
                    args.user,
                    args.database,
                    pulumi.secret(args.password),
                ],
            },
            { parent: this, dependsOn: checked ? [checked] : [] },
        );
    }

    private declareServe(
        name: string,
        args: ClusterArgs,
        container: pulumi.Output<string>,
        after: docker.Container[],
    ): command.local.Command {
        return new command.local.Command(
            `${name}-serve`,
            {
                environment: stepEnvironment(args.dockerHost),
                create: stepCommand("serve", {
                    container,
                    network: args.network,
                    alias: args.hostAlias,
                    database: args.database,
                    ...(args.revertAcceptLoss ? { "accept-loss": args.revertAcceptLoss } : {}),
                    ...(args.synapseContainers?.length ? { synapse: args.synapseContainers.join(",") } : {}),
                }),
                // A new container (minor update, revert) runs serve again.
                triggers: after.map((c) => c.id),
            },
            { parent: this, dependsOn: after },
        );
    }
}

function clusterLabels(major: number): { label: string; value: string }[] {
    return [
        { label: MANAGED_LABEL, value: "true" },
        { label: CLUSTER_LABEL, value: String(major) },
    ];
}

/** The cluster's container: the official image's environment, its data, the declared settings, never started by Pulumi. */
function containerInputs(args: ClusterArgs, volume?: docker.Volume): docker.ContainerArgs {
    const layout = dataLayout(args.major);
    const settings = args.settings ?? {};
    return {
        name: args.containerName,
        image: args.image,
        envs: pulumi.secret(
            pulumi
                .all([args.user, args.database, args.password, args.initdbArgs])
                .apply(([user, db, password, initdb]) => [
                    `POSTGRES_USER=${user}`,
                    `POSTGRES_DB=${db}`,
                    `POSTGRES_PASSWORD=${password}`,
                    `POSTGRES_INITDB_ARGS=${initdb}`,
                    `PGDATA=${layout.pgdata}`,
                ]),
        ),
        volumes: [
            args.data.kind === "volume"
                ? { volumeName: volume!.name, containerPath: layout.mountTarget }
                : { hostPath: args.data.path, containerPath: layout.mountTarget },
        ],
        command: serverCommand(settings),
        shmSize: shmSizeFor(settings),
        networksAdvanced: [{ name: args.network, aliases: [args.hostAlias] }],
        ports: args.port === undefined ? [] : [{ internal: 5432, external: args.port, ip: "127.0.0.1" }],
        labels: clusterLabels(args.major),
        // -h 127.0.0.1: the image's first-start server listens on the socket only, so this is healthy only
        // once the real server runs.
        healthcheck: {
            tests: pulumi
                .all([args.user, args.database])
                .apply(([u, d]) => ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", u, "-d", d]),
            interval: `${HEALTHCHECK_INTERVAL_SECONDS}s`,
            timeout: "5s",
            retries: 12,
            startPeriod: "30s",
        },
        // No provider wait: it passes only at the first health check, a whole interval after the start, and
        // at a switch that interval is downtime. The steps that use the server wait for it themselves (serve,
        // every 0.1 s, before it starts Synapse; an upgrade's first step, for a source still starting).
        wait: false,
        // unless-stopped, not always: a cluster stopped at cutover must stay stopped after a daemon restart,
        // or two servers would answer to the alias.
        restart: "unless-stopped",
        // Pulumi never starts a cluster: the serve step does, once it has stopped the other cluster under the
        // alias, and only when going back loses nothing. A replaced container that Pulumi started would answer
        // beside the serving one until serve ran, stay up after serve refused (a revert that would lose
        // events), and fail to start while the other still holds the published port. Not must-run: the
        // provider deletes a must-run container it finds stopped, and `pulumi refresh` of the stopped source
        // must not make the next up start it.
        mustRun: false,
        start: false,
        // The official image's STOPSIGNAL (fast shutdown); the provider's default grace of 0 s is a kill.
        stopSignal: "SIGINT",
        destroyGraceSeconds: 120,
        // Anonymous volumes die with the container by default; keep them, in case an image declares one.
        removeVolumes: false,
    };
}
