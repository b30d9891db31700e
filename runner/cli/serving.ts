// The steps around the one cluster that serves Synapse: before Pulumi replaces its container, its settings, and
// the switch (or revert) that makes it the one answering to the alias.
import { stopSynapseBeforeReplace } from "../switch/before-replace";
import { parseDataLocation } from "../target/layout";
import { serveCluster } from "../switch/serve";
import { checkSettings } from "../config/settings";
import { parseContainerList } from "../switch/synapse";
import { commandFlag, password, settingsFlag } from "./inputs";
import { reportServe, settingsList } from "./reports";
import { Step } from "./step";

export const SERVING: Record<string, Step> = {
    "before-replace": {
        summary:
            "Before Pulumi replaces the serving container (minor update, new settings, new data location): refuse an empty data location; stop Synapse, serve starts it again.",
        flags: {
            container: { help: "the serving container" },
            image: { help: "the image the stack now declares for it" },
            command: {
                help: "the server command the stack now declares (JSON list), when postgres:settings are set",
                optional: true,
            },
            data: {
                help: "the data location the stack now declares (volume name or absolute host folder); an empty one is refused",
                optional: true,
            },
            major: { help: "the cluster's major (where its image keeps the data), with --data", optional: true },
            port: { help: "the host port the stack now publishes 5432 on (empty: none)", optional: true },
            network: { help: "the Docker network the stack now declares", optional: true },
            alias: { help: "the host name on it", optional: true },
            user: { help: "the bootstrap superuser the stack now declares", optional: true },
            database: { help: "the database the stack now declares", optional: true },
            synapse: { help: "Synapse's containers, comma-separated", optional: true },
        },
        async run(f, out) {
            const data = f.opt("data");
            const r = await stopSynapseBeforeReplace({
                container: f.str("container"),
                image: f.str("image"),
                command: commandFlag(f),
                synapse: parseContainerList(f.opt("synapse")),
                data: data === undefined ? undefined : parseDataLocation(data),
                major: f.opt("major") === undefined ? undefined : f.int("major"),
                port: f.opt("port"),
                network: f.opt("network"),
                alias: f.opt("alias"),
                user: f.opt("user"),
                database: f.opt("database"),
                password: password(false),
            });
            if (r.startChecked)
                out(
                    `before-replace: the replacement's server (${f.str("image")}, the declared settings, this cluster's configuration files) started and stopped cleanly in a throw-away container.`,
                );
            out(
                r.replacing
                    ? `before-replace: "${f.str("container")}" will be replaced (${r.replacing}); ${r.stopped.length ? `stopped Synapse (${r.stopped.join(", ")}) first, and serve starts it again` : "Synapse was not running here"}.`
                    : `before-replace: "${f.str("container")}" is not being replaced while it serves; nothing to do.`,
            );
        },
    },
    "check-settings": {
        summary: "Check declared settings (postgres:settings) with the cluster's own server binary, changing nothing.",
        flags: {
            container: {
                help: "the cluster's container (when it is not running yet, there is nothing to check against)",
            },
            settings: { help: 'the settings as a JSON object, like {"work_mem":"16MB"}' },
        },
        async run(f, out) {
            const r = await checkSettings(f.str("container"), settingsFlag(f));
            out(
                r.checked
                    ? `check-settings: "${f.str("container")}" accepts ${settingsList(r.settings) || "the removal of every declared setting"}.`
                    : `check-settings: "${f.str("container")}" is not running yet; its first start applies the settings (an upgrade's copy-config step checks them before the switch).`,
            );
        },
    },
    serve: {
        stopsSynapse: "around",
        summary: "Make this cluster the one Synapse reaches: stop our other holder of the alias, start this one.",
        flags: {
            container: { help: "the cluster's container" },
            network: { help: "the Docker network Synapse uses" },
            alias: { help: "the host name Synapse connects to" },
            database: {
                help: "Synapse's database (default synapse), checked for events a revert would lose",
                optional: true,
            },
            "accept-loss": {
                help: "the number of events written since the switch that a revert may lose (default 0), or any: also when they cannot be counted",
                optional: true,
            },
        },
        async run(f, out) {
            const loss = f.opt("accept-loss");
            const r = await serveCluster({
                container: f.str("container"),
                network: f.str("network"),
                alias: f.str("alias"),
                synapse: parseContainerList(f.opt("synapse")),
                database: f.opt("database"),
                acceptLoss: loss === "any" ? "any" : loss === undefined ? 0 : f.int("accept-loss", 0),
            });
            reportServe(r, { container: f.str("container"), network: f.str("network"), alias: f.str("alias") }, out);
        },
    },
};
