export interface Greeting {
  message: string;
  runtime: string;
}

export function greeting(word: string, name: string): Greeting {
  return { message: `${word} ${name}`, runtime: `node ${process.versions.node}` };
}
