// Worker that fetches files for a page and sends each body back as an
// ArrayBuffer, so that reading the bodies does not take the page's main
// thread. caqe/early_audio.html starts it for a trial page's stimuli.
//
// Message in: {urls: string[]}. Messages out, one per URL:
// {url, bytes: ArrayBuffer} (transferred, not copied) or {url, error: string}.

self.onmessage = ({ data }) => {
  for (const url of data.urls) {
    fetch(url)
      .then(async (response) => {
        if (!response.ok) throw new Error(`the server responded with HTTP ${response.status}`);
        const bytes = await response.arrayBuffer();
        self.postMessage({ url, bytes }, [bytes]);
      })
      .catch((error) => self.postMessage({ url, error: String(error?.message ?? error) }));
  }
};
