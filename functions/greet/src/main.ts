// A TypeScript function beside the Python ones: type-checked (tsc) and compiled (esbuild) on the host by
// `fnctl apply`, run by Node.js 22 in the same hardened sandbox.
import { greeting, type Greeting } from "./greeting";

interface Event {
  name?: string;
}

interface Context {
  functionName: string;
  awsRequestId: string;
  getRemainingTimeInMillis(): number;
}

export const handler = async (event: Event, context: Context): Promise<Greeting> => {
  console.log(`request ${context.awsRequestId}: ${context.getRemainingTimeInMillis()} ms left`);
  return greeting(process.env.GREETING ?? "hello", event.name ?? "world");
};
