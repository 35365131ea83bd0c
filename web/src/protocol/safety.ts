// §6 safety numbers and the recovery phrase (BIP39 English of the 32-byte master seed).
import { sha512 } from "@noble/hashes/sha2.js";
import { entropyToMnemonic, mnemonicToEntropy, validateMnemonic } from "@scure/bip39";
import { wordlist } from "@scure/bip39/wordlists/english.js";
import { ProtocolError, b58Key, concat, utf8 } from "./encoding";

export const SAFETY_LABEL = utf8("decentcom/safety-number/v1\n");

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

/** 12 groups of 5 digits, single spaces; the same whichever user asks. */
export function safetyNumber(userA: string, userB: string): string {
  const [ka, kb] = [b58Key(userA, "user_id"), b58Key(userB, "user_id")].sort(compareBytes);
  const h = sha512(concat(SAFETY_LABEL, ka!, kb!));
  const groups: string[] = [];
  for (let i = 0; i < 12; i++) {
    let n = 0;
    for (let j = 0; j < 5; j++) n = n * 256 + h[5 * i + j]!; // 40 bits: exact in a double
    groups.push(String(n % 100000).padStart(5, "0"));
  }
  return groups.join(" ");
}

export function phraseFromSeed(seed: Uint8Array): string {
  if (seed.length !== 32) throw new ProtocolError("a master seed is 32 bytes");
  return entropyToMnemonic(seed, wordlist);
}

/** The 32-byte seed of a 24-word phrase (case and spacing do not matter; the checksum does). */
export function seedFromPhrase(phrase: string): Uint8Array {
  const words = phrase.trim().toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length !== 24) throw new ProtocolError("a recovery phrase has 24 words", "invalid_phrase");
  const normal = words.join(" ");
  if (!validateMnemonic(normal, wordlist))
    throw new ProtocolError("this is not a valid recovery phrase (a word is wrong or missing)", "invalid_phrase");
  return mnemonicToEntropy(normal, wordlist);
}
