// 3-D Secure in the browser. When the server pays through Stripe (`GET /client.json`
// says `payments: "stripe"` and gives the publishable key), a `booking.pay` answered
// with `payment_action_required` is completed with Stripe.js, loaded from
// js.stripe.com as Stripe requires (the Content-Security-Policy allows it with
// `--payments stripe`). With the sandbox gateway there is nothing to complete.

let config = null;
let stripe = null;

/** The server's payment settings (`GET /client.json`), fetched once. */
export function paymentsConfig() {
  config ??= fetch('/client.json')
    .then((r) => (r.ok ? r.json() : {}))
    .catch(() => ({}));
  return config;
}

function loadStripeJs() {
  if (window.Stripe) return Promise.resolve(window.Stripe);
  return new Promise((resolve, reject) => {
    const s = document.createElement('script');
    s.src = 'https://js.stripe.com/v3/';
    s.onload = () => (window.Stripe ? resolve(window.Stripe) : reject(new Error('Stripe.js did not load')));
    s.onerror = () => reject(new Error('Stripe.js could not be loaded'));
    document.head.append(s);
  });
}

/**
 * The customer-action handler for `Jetway.payCompletingAction`: shows the card
 * issuer's authentication with Stripe.js (`handleNextAction`, or
 * `confirmCardPayment` on an older Stripe.js). Null when this server's payments
 * cannot ask for an action the browser can complete (sandbox, or no publishable key).
 * @returns {Promise<((clientSecret: string) => Promise<void>)|null>}
 */
export async function stripeActionHandler() {
  const c = await paymentsConfig();
  if (c.payments !== 'stripe' || !c.stripe_publishable_key) return null;
  return async (clientSecret) => {
    const Stripe = await loadStripeJs();
    stripe ??= Stripe(c.stripe_publishable_key);
    // success or not, the server then reads the PaymentIntent's state itself
    if (stripe.handleNextAction) await stripe.handleNextAction({ clientSecret });
    else await stripe.confirmCardPayment(clientSecret);
  };
}
