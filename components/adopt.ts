// Reading an adopted container (postgres:adopt) while the program is evaluated, so that what it is (its major,
// its data, its network) decides what is declared, and `pulumi preview` shows it. A command invoke runs
// `synapse-pg inspect`, which only reads.
import * as command from "@pulumi/command";
import { AdoptedFacts } from "../runner/inspect";
import { shellQuote, STEP_RUNNER } from "./command-line";

export async function readAdopted(container: string): Promise<AdoptedFacts> {
    const result = await command.local.run({ command: `${STEP_RUNNER} inspect --container ${shellQuote(container)}` });
    return JSON.parse(result.stdout.trim().split("\n").pop()!);
}
