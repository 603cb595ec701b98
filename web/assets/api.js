// The HTTP half of the API (../shared/API.md): one call() that sends the
// token, parses JSON and turns the error shape into an ApiError.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor() {
    this.token = null;
    this.onUnauthenticated = () => {};
  }

  async call(method, path, body) {
    const headers = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (error) {
      throw new ApiError(0, 'network', 'The server cannot be reached; check the connection and try again.');
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
    if (!response.ok) {
      const error = json && json.error ? json.error : { code: 'http_' + response.status, message: `The server answered ${response.status}.` };
      if (response.status === 401 && this.token) this.onUnauthenticated();
      const retry = response.headers.get('retry-after');
      const message = response.status === 429 && retry ? `${error.message} (retry in ${retry} s)` : error.message;
      throw new ApiError(response.status, error.code, message);
    }
    return json;
  }

  get(path) { return this.call('GET', path); }
  post(path, body) { return this.call('POST', path, body === undefined ? {} : body); }
  put(path, body) { return this.call('PUT', path, body === undefined ? {} : body); }
  patch(path, body) { return this.call('PATCH', path, body); }
  del(path) { return this.call('DELETE', path); }
}

export const enc = encodeURIComponent;
