import { h, toast } from '../ui.js';

const USER_RE = /^[a-z0-9_.-]{3,32}$/;

export async function authView(ctx, el, { query, signal }) {
  // only a page of this app: any other value (a path, another origin) is dropped
  const asked = query.get('next') || '';
  const next = asked.startsWith('#/') ? asked : '#/';
  let mode = query.get('mode') === 'register' ? 'register' : 'login';
  if (ctx.user) {
    ctx.navigate(next, { replace: true });
    return;
  }

  const title = h('h1', { id: 'auth-title' }, '');
  const sub = h('p', { class: 'muted' }, '');
  const user = h('input', { id: 'auth-username', name: 'username', type: 'text', required: true, autocapitalize: 'none', spellcheck: 'false', minlength: 3, maxlength: 32, 'aria-describedby': 'auth-username-hint' });
  const pass = h('input', { id: 'auth-password', name: 'password', type: 'password', required: true, minlength: 8, maxlength: 128, 'aria-describedby': 'auth-password-hint' });
  const userHint = h('p', { class: 'hint', id: 'auth-username-hint' }, '');
  const passHint = h('p', { class: 'hint', id: 'auth-password-hint' }, '');
  const err = h('div', { class: 'form-error', role: 'alert', 'data-testid': 'auth-error' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, '');
  const switchBtn = h('button', { type: 'button', class: 'link-btn', onclick: () => setMode(mode === 'login' ? 'register' : 'login') }, '');
  const switchText = h('span', {}, '');
  const form = h(
    'form',
    { class: 'auth-form', novalidate: true, 'aria-labelledby': 'auth-title' },
    h('div', { class: 'field' }, h('label', { for: 'auth-username' }, 'Username'), user, userHint),
    h('div', { class: 'field' }, h('label', { for: 'auth-password' }, 'Password'), pass, passHint),
    err,
    submit,
  );

  function setMode(m) {
    mode = m;
    const reg = m === 'register';
    title.textContent = reg ? 'Create your account' : 'Log in';
    sub.textContent = reg ? 'Book seats, keep your trips in one place and manage refunds.' : 'Welcome back. Log in to hold seats and see your trips.';
    submit.textContent = reg ? 'Create account' : 'Log in';
    user.autocomplete = 'username';
    pass.autocomplete = reg ? 'new-password' : 'current-password';
    userHint.textContent = reg ? '3–32 characters: lowercase letters, digits, “_”, “.” or “-”.' : '';
    passHint.textContent = reg ? 'At least 8 characters.' : '';
    switchText.textContent = reg ? 'Already have an account? ' : 'New to Jetway? ';
    switchBtn.textContent = reg ? 'Log in' : 'Create an account';
    err.textContent = '';
    history.replaceState(null, '', `#/login?${new URLSearchParams({ next, ...(reg ? { mode: 'register' } : {}) })}`);
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    const username = user.value.trim().toLowerCase();
    const password = pass.value;
    if (mode === 'register') {
      if (!USER_RE.test(username)) {
        err.textContent = 'Choose a username of 3–32 characters: lowercase letters, digits, “_”, “.” or “-”.';
        user.focus();
        return;
      }
      if (password.length < 8 || password.length > 128) {
        err.textContent = 'Your password needs at least 8 characters.';
        pass.focus();
        return;
      }
    } else if (!username || !password) {
      err.textContent = 'Enter your username and password.';
      return;
    }
    submit.disabled = true;
    try {
      const r =
        mode === 'register'
          ? await ctx.client.call('auth.register', { username, password })
          : await ctx.client.call('auth.login', { username, password, ...ctx.client.deviceParams(username) });
      ctx.client.rememberDevice(r);
      if (signal.aborted) return;
      ctx.setSession(r);
      toast(mode === 'register' ? `Welcome to Jetway, ${r.user.username}!` : `Welcome back, ${r.user.username}.`, 'success');
      ctx.navigate(next, { replace: true });
    } catch (e2) {
      if (signal.aborted) return;
      err.textContent =
        {
          bad_credentials: 'That username and password do not match.',
          username_taken: 'That username is taken. Please choose another one.',
          weak_password: 'That password is too weak: use at least 8 characters.',
          invalid_params: 'Please check your username and password.',
          rate_limited: 'Too many attempts. Please wait a moment and try again.',
          disconnected: 'We lost the connection. Please try again in a moment.',
        }[e2.reason] || e2.message;
    } finally {
      submit.disabled = false;
    }
  });

  el.append(h('section', { class: 'card auth-card' }, title, sub, form, h('p', { class: 'auth-switch' }, switchText, switchBtn)));
  setMode(mode);
  user.focus();
}
