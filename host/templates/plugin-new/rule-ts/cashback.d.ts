// The contract `cashback:plugin@0.1.0` (wit/since_v0.1.0/), as componentize-js presents
// it to JavaScript: records are objects with camelCase fields, `s64` is a bigint (money
// is integer minor units, never a float), `u32` a number, `option<T>` is `T | undefined`,
// enums are their lower-case names, a variant is `{ tag, val }`. The WIT is frozen per
// version, so these declarations are too; the WIT's comments are the reference.

declare module 'cashback:plugin/types@0.1.0' {
  /** Milliseconds since the Unix epoch, UTC. */
  export type Timestamp = bigint;
  export interface Money {
    /** Integer minor units (cents). */
    minor: bigint;
    /** ISO 4217 code. */
    currency: string;
  }
  export type ConversionState = 'created' | 'pending' | 'adjusted' | 'completed' | 'rejected' | 'reversed';
  export interface LineItem {
    id: string;
    sku: string;
    category: string;
    quantity: number;
    /** The line's value, in minor units of the order's currency. */
    amount: bigint;
  }
  export interface Order {
    conversionId: string;
    merchant: string;
    network: string;
    orderId: string;
    eventType: string;
    state: ConversionState;
    amount: Money;
    commission: Money;
    /** One line holding the whole order (id "order") when the network reported none. */
    lineItems: LineItem[];
    eventTime: Timestamp;
    clickTime?: Timestamp;
    userId?: string;
  }
  export interface LineCashback {
    lineId: string;
    /** Cashback for the line, minor units of the order's currency. */
    amount: bigint;
    rateBps?: number;
    reason: string;
  }
  export interface Exclusion {
    lineId: string;
    reason: string;
  }
  export interface RuleDecision {
    lines: LineCashback[];
    exclusions: Exclusion[];
    /** Equals the sum of `lines`; the host refuses a decision where it does not. */
    total: Money;
    /** Sends the order to manual review with this reason. */
    hold?: string;
    rewardDelayDays?: number;
    notes: string[];
  }
  export interface RuleContext {
    /** The evaluation time: use it, never a clock (there is none in the sandbox). */
    now: Timestamp;
    priorOrders: number;
    decisionSoFar?: RuleDecision;
    attributes: Array<[string, string]>;
  }
  /** Throw one of these from `evaluate` to return the contract's `plugin-error`. */
  export type PluginError =
    | { tag: 'invalid-input'; val: string }
    | { tag: 'config'; val: string }
    | { tag: 'upstream'; val: string }
    | { tag: 'internal'; val: string };
}

declare module 'cashback:plugin/config@0.1.0' {
  /** The configuration the merchant gave this plugin, as JSON text. */
  export function get(): string;
}

declare module 'cashback:plugin/log@0.1.0' {
  export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
  /** Logs through the host, attributed to this plugin and capped per call. */
  export function write(level: Level, message: string): void;
}
