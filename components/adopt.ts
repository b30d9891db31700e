// Reading an adopted container (postgres:adopt) while the program is evaluated, so that what it is (its major,
// its data, its network) decides what is declared, and `pulumi preview` shows it. A command invoke runs
// `synapse-pg inspect`, which only reads.
import * as command from "@pulumi/command";
import { AdoptedFacts } from "../runner/checks/inspect";
import { stepEnvironment, stepLine } from "./command-line";

export async function readAdopted(container: string, dockerHost?: string): Promise<AdoptedFacts> {
    const result = await command.local.run({
        command: stepLine("inspect", { container }),
        environment: stepEnvironment(dockerHost),
    });
    return JSON.parse(result.stdout.trim().split("\n").pop()!);
}
