package metrics

import (
	"context"
	"fmt"
	"net/http"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scraped is one scrape of a /metrics endpoint: the metric families by
// name. For tests (and tools) that check what a process serves.
type Scraped map[string]*dto.MetricFamily

// Scrape GETs url (http://ADDR/metrics) and parses its text exposition.
func Scrape(ctx context.Context, url string) (Scraped, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return Scraped(fams), nil
}

// Series returns the series of metric name whose labels include every
// name=value pair of labels ("phase", "compute", ...).
func (s Scraped) Series(name string, labels ...string) []*dto.Metric {
	var out []*dto.Metric
	for _, m := range s[name].GetMetric() {
		if hasLabels(m, labels) {
			out = append(out, m)
		}
	}
	return out
}

// Value is the value of the one series of a counter or gauge name with
// labels; an error if there is not exactly one.
func (s Scraped) Value(name string, labels ...string) (float64, error) {
	m, err := s.one(name, labels)
	if err != nil {
		return 0, err
	}
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue(), nil
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), nil
	}
	return 0, fmt.Errorf("%s%v is neither a counter nor a gauge", name, labels)
}

// Count is the sample count of the one series of histogram name with
// labels; an error if there is not exactly one.
func (s Scraped) Count(name string, labels ...string) (uint64, error) {
	m, err := s.one(name, labels)
	if err != nil {
		return 0, err
	}
	if m.Histogram == nil {
		return 0, fmt.Errorf("%s%v is not a histogram", name, labels)
	}
	return m.GetHistogram().GetSampleCount(), nil
}

func (s Scraped) one(name string, labels []string) (*dto.Metric, error) {
	ms := s.Series(name, labels...)
	if len(ms) != 1 {
		return nil, fmt.Errorf("%s%v: %d series, want 1", name, labels, len(ms))
	}
	return ms[0], nil
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}
