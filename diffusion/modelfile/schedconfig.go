package modelfile

import (
	"fmt"
	"os"
)

// WithSchedulerConfig reads the scheduler from a diffusers scheduler_config.json
// instead of the model's own (a folder's scheduler/) or, for single files, the
// family's default: as diffusers' from_single_file(config=...), this is how a
// single-file checkpoint of a distilled model (SD-Turbo: Euler, trailing
// spacing, epsilon) gets its sampler, spacing and prediction type. Its
// prediction_type also decides what single files infer from it (the native
// size of SD 2.x); WithPredictionType still overrides it.
func WithSchedulerConfig(path string) Option { return func(o *options) { o.scheduler = path } }

// readSchedulerConfig reads WithSchedulerConfig's file (nil without one) and
// makes its prediction type the option's unless that is set.
func (o *options) readSchedulerConfig() (*SchedulerConfig, error) {
	if o.scheduler == "" {
		return nil, nil
	}
	b, err := os.ReadFile(o.scheduler)
	if err != nil {
		return nil, err
	}
	c, err := ParseSchedulerConfig(b)
	if err != nil {
		return nil, badModel(fmt.Errorf("%s: %w", o.scheduler, err))
	}
	if !c.PredictionType.Valid() {
		return nil, badModelf("%s: prediction_type %v", o.scheduler, c.PredictionType)
	}
	if o.prediction == nil {
		p := c.PredictionType
		o.prediction = &p
		return &c, nil
	}
	if c.Raw, err = setJSONField(c.Raw, "prediction_type", o.prediction.String()); err != nil {
		return nil, badModel(fmt.Errorf("%s: %w", o.scheduler, err))
	}
	c.PredictionType = *o.prediction
	return &c, nil
}
